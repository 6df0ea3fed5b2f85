//! The whitelist check a PyTorch checkpoint passes before its pickle is interpreted.
//!
//! A pickle names Python callables (`GLOBAL module name`) that Python's unpickler imports and
//! calls. Our reader never calls anything, but a file that names `os.system` or a model class
//! is not a plain state dict, and it is refused with the name it uses: only tensor rebuild
//! functions, storage types and `OrderedDict` may appear. The check walks the opcodes without
//! building any value, knowing each opcode's argument layout (Python's `pickletools`).

use std::io::Read;

use anyhow::{bail, Context};

/// The globals a state dict's pickle needs.
const ALLOWED: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// Whether `module.name` is on the whitelist.
pub fn allowed(module: &str, name: &str) -> bool {
    ALLOWED.iter().any(|&(m, n)| m == module && n == name)
}

/// Checks every pickle in a checkpoint's `bytes` (a zip archive's `.pkl` entries, or the
/// pickles at the start of a legacy stream) against the whitelist.
pub fn check(bytes: &[u8]) -> anyhow::Result<()> {
    if bytes.starts_with(b"PK\x03\x04") {
        check_zip(bytes)
    } else {
        check_legacy(bytes)
    }
}

fn check_zip(bytes: &[u8]) -> anyhow::Result<()> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .context("not a readable zip archive (the format of torch.save since PyTorch 1.6)")?;
    let mut found = false;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .with_context(|| format!("zip entry {index} cannot be read"))?;
        let name = entry
            .name()
            .with_context(|| format!("zip entry {index} has an unreadable name"))?
            .into_owned();
        if !name.ends_with(".pkl") {
            continue;
        }
        found = true;
        let mut pickle = Vec::new();
        (&mut entry)
            .take(pytorch_reader::MAX_PICKLE_SIZE + 1)
            .read_to_end(&mut pickle)
            .with_context(|| format!("zip entry {name} cannot be read"))?;
        check_pickle(&pickle, 0).with_context(|| format!("in {name}"))?;
    }
    if !found {
        bail!("the zip archive has no data.pkl entry, so it is not a torch.save checkpoint");
    }
    Ok(())
}

/// A legacy stream starts with five pickles: magic number, protocol version, system info, the
/// saved object, and the list of storage keys; the raw storages follow.
fn check_legacy(bytes: &[u8]) -> anyhow::Result<()> {
    let mut at = 0;
    for what in [
        "magic number",
        "protocol version",
        "system info",
        "saved object",
        "storage keys",
    ] {
        at = check_pickle(bytes, at).with_context(|| {
            format!("the legacy torch.save stream's {what} pickle (at byte {at})")
        })?;
    }
    Ok(())
}

/// A pickle opcode's argument, as `pickletools` describes it.
enum Argument {
    None,
    Fixed(usize),
    /// A little-endian length of this many bytes, then that many bytes.
    Counted(usize),
    /// Text up to a newline.
    Line,
    /// Two lines: GLOBAL's and INST's module and name.
    TwoLines,
}

fn argument(opcode: u8) -> Option<Argument> {
    use Argument::*;
    Some(match opcode {
        b'(' | b'.' | b'0' | b'1' | b'2' | b'N' | b'Q' | b'R' | b'a' | b'b' | b'd' | b'}'
        | b'e' | b'l' | b']' | b'o' | b's' | b't' | b')' | b'u' | 0x81 | 0x85 | 0x86 | 0x87
        | 0x88 | 0x89 | 0x8f | 0x90 | 0x91 | 0x92 | 0x93 | 0x94 | 0x97 | 0x98 => None,
        b'I' | b'L' | b'F' | b'S' | b'V' | b'P' | b'g' | b'p' => Line,
        b'c' | b'i' => TwoLines,
        b'K' | b'h' | b'q' | 0x80 => Fixed(1),
        b'M' => Fixed(2),
        b'J' | b'j' | b'r' => Fixed(4),
        b'G' | 0x95 => Fixed(8),
        b'U' | b'C' | 0x8a | 0x8c => Counted(1),
        b'T' | b'X' | b'B' | 0x8b => Counted(4),
        0x8d | 0x8e | 0x96 => Counted(8),
        _ => return Option::None,
    })
}

/// Walks one pickle starting at byte `start` of `bytes`, refusing any global off the whitelist;
/// returns the offset just past its STOP.
pub fn check_pickle(bytes: &[u8], start: usize) -> anyhow::Result<usize> {
    // The last two values pushed, where they are strings: STACK_GLOBAL takes its module and
    // name from the stack, so they must be literal strings (or memo copies of them).
    let mut recent: [Option<String>; 2] = [None, None];
    // every memo entry, with its value where that is a string
    let mut memo: std::collections::HashMap<u64, Option<String>> = std::collections::HashMap::new();
    let mut at = start;
    let truncated = |at: usize| {
        anyhow::anyhow!(
            "the pickle ends at byte {at} before its STOP opcode: the file is truncated"
        )
    };
    loop {
        let &opcode = bytes.get(at).ok_or_else(|| truncated(at))?;
        let position = at;
        at += 1;
        let Some(arg) = argument(opcode) else {
            bail!("unknown pickle opcode 0x{opcode:02x} at byte {position}: not a pickle PyTorch writes");
        };
        let mut pushed: Option<Option<String>> = None;
        match arg {
            Argument::None => {}
            Argument::Fixed(n) => {
                let field = bytes.get(at..at + n).ok_or_else(|| truncated(at))?;
                let mut index = [0u8; 8];
                index[..n].copy_from_slice(field);
                let index = u64::from_le_bytes(index);
                match opcode {
                    // BINPUT / LONG_BINPUT: memo the string on top, if it is one
                    b'q' | b'r' => {
                        memo.insert(index, recent[1].clone());
                    }
                    // BINGET / LONG_BINGET
                    b'h' | b'j' => pushed = Some(memo.get(&index).cloned().flatten()),
                    0x80 | 0x95 => {}
                    _ => pushed = Some(None),
                }
                at += n;
            }
            Argument::Counted(n) => {
                let field = bytes.get(at..at + n).ok_or_else(|| truncated(at))?;
                let mut length = [0u8; 8];
                length[..n].copy_from_slice(field);
                let length = usize::try_from(u64::from_le_bytes(length))
                    .ok()
                    .filter(|&l| l <= bytes.len())
                    .ok_or_else(|| truncated(at))?;
                at += n;
                let data = bytes.get(at..at + length).ok_or_else(|| truncated(at))?;
                at += length;
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8 push text
                pushed = Some(match opcode {
                    b'X' | 0x8c | 0x8d => std::str::from_utf8(data).ok().map(str::to_string),
                    _ => None,
                });
            }
            Argument::Line => {
                let end = bytes[at..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .ok_or_else(|| truncated(at))?;
                let line = String::from_utf8_lossy(&bytes[at..at + end]).into_owned();
                at += end + 1;
                match opcode {
                    b'p' => {
                        if let Ok(index) = line.trim().parse::<u64>() {
                            memo.insert(index, recent[1].clone());
                        }
                    }
                    b'g' => {
                        pushed = Some(
                            line.trim()
                                .parse::<u64>()
                                .ok()
                                .and_then(|i| memo.get(&i).cloned().flatten()),
                        )
                    }
                    _ => pushed = Some(None),
                }
            }
            Argument::TwoLines => {
                let mut lines = [String::new(), String::new()];
                for line in &mut lines {
                    let end = bytes[at..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or_else(|| truncated(at))?;
                    *line = String::from_utf8_lossy(&bytes[at..at + end]).into_owned();
                    at += end + 1;
                }
                refuse_unless_allowed(&lines[0], &lines[1], position)?;
                pushed = Some(None);
            }
        }
        match opcode {
            b'.' => return Ok(at),
            // STACK_GLOBAL
            0x93 => {
                let [Some(module), Some(name)] = &recent else {
                    bail!("STACK_GLOBAL at byte {position} takes a name computed by the pickle; a state dict's pickle names its globals literally");
                };
                refuse_unless_allowed(module, name, position)?;
                pushed = Some(None);
            }
            // EXT1/2/4 look a global up in Python's extension registry: never in a state dict
            0x82..=0x84 => bail!(
                "the pickle refers to a registered extension (opcode 0x{opcode:02x} at byte {position}); a state dict never does"
            ),
            // MEMOIZE
            0x94 => {
                memo.insert(memo.len() as u64, recent[1].clone());
            }
            // the remaining opcodes without arguments that push a value
            b'N' | b'Q' | b'R' | b'd' | b'}' | b'l' | b']' | b'o' | b't' | b')' | 0x81 | 0x85 | 0x86
            | 0x87 | 0x88 | 0x89 | 0x8f | 0x91 | 0x92 | b'2' | 0x97 => pushed = Some(None),
            _ => {}
        }
        if let Some(value) = pushed {
            recent = [recent[1].take(), value];
        }
    }
}

fn refuse_unless_allowed(module: &str, name: &str, position: usize) -> anyhow::Result<()> {
    if allowed(module, name) {
        return Ok(());
    }
    let hint = if module.starts_with("torch.nn") {
        " (a whole pickled model: save `model.state_dict()` instead, which holds tensors only)"
    } else {
        ""
    };
    bail!(
        "the pickle calls `{module}.{name}` (byte {position}), which is not a tensor, storage or OrderedDict: refused, since only plain state dicts are read{hint}. Allowed: {}",
        ALLOWED
            .iter()
            .map(|(m, n)| format!("{m}.{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pickle.dumps(collections.OrderedDict(), protocol=2)`, written out by hand.
    const ORDERED_DICT: &[u8] = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01.";

    #[test]
    fn a_whitelisted_global_passes_and_returns_the_end() {
        assert_eq!(check_pickle(ORDERED_DICT, 0).unwrap(), ORDERED_DICT.len());
    }

    #[test]
    fn os_system_is_refused_by_name() {
        // pickle.dumps of a __reduce__ returning (os.system, ('echo pwned',)), protocol 2
        let hostile =
            b"\x80\x02cposix\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
        let err = check_pickle(hostile, 0).unwrap_err().to_string();
        assert!(err.contains("`posix.system`"), "{err}");
    }

    #[test]
    fn stack_global_reads_its_names_from_literal_strings() {
        // protocol 4: SHORT_BINUNICODE 'builtins', MEMOIZE, SHORT_BINUNICODE 'eval', MEMOIZE,
        // STACK_GLOBAL
        let hostile = b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94.";
        let err = check_pickle(hostile, 0).unwrap_err().to_string();
        assert!(err.contains("`builtins.eval`"), "{err}");
        let fine = b"\x80\x04\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R.";
        assert_eq!(check_pickle(fine, 0).unwrap(), fine.len());
        // the same names fetched back from the memo
        let memo = b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x94h\x00h\x01\x93.";
        let err = check_pickle(memo, 0).unwrap_err().to_string();
        assert!(err.contains("`builtins.exec`"), "{err}");
    }

    #[test]
    fn a_computed_global_name_is_refused() {
        // the module name is the result of a call, not a literal
        let computed = b"\x80\x04)\x8c\x04eval\x93.";
        let err = check_pickle(computed, 0).unwrap_err().to_string();
        assert!(err.contains("computed"), "{err}");
    }

    #[test]
    fn truncation_and_unknown_opcodes_are_errors() {
        let cut = &ORDERED_DICT[..ORDERED_DICT.len() - 3];
        assert!(check_pickle(cut, 0)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(check_pickle(b"\x80\x02\xff.", 0)
            .unwrap_err()
            .to_string()
            .contains("unknown pickle opcode 0xff"));
        // a counted string claiming more bytes than the file has
        assert!(check_pickle(b"\x80\x02X\xff\xff\xff\x7fab.", 0)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }
}
