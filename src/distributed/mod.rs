//! Training beyond one process: the MPI world `distill` runs in under `mpirun` or `srun`.
//!
//! A build without the `mpi` feature, or a process not started by an MPI launcher, is a world
//! of one rank, and every function here is then the identity (a broadcast keeps its buffer, an
//! all-reduce copies). With the feature and a launcher, [`init`] joins the world once, at the
//! start of the command line, and the training loop asks [`size`] and [`rank`].
//!
//! Every collective has a deadline (`DISTILL_MPI_TIMEOUT`, seconds, default 300): MPI has none,
//! and a peer that hangs (a stopped process, a dead link) would otherwise block the others
//! forever. A rank that fails, by error or panic, aborts the whole job (`MPI_Abort`) instead of
//! returning: unwinding into `MPI_Finalize` while a peer waits in a collective deadlocks both.

mod params;
#[cfg(feature = "mpi")]
mod world;

pub use params::{broadcast_module, trainable_fingerprint, GradientAverage, StepTotals};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Environment variables MPI launchers set on every rank, checked before MPI is initialised:
/// Open MPI's `mpirun`, PMIx (Open MPI 4/5, `srun --mpi=pmix`), and PMI (MPICH's Hydra, Intel
/// MPI, `srun --mpi=pmi2`).
const LAUNCHER_VARIABLES: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"];

/// Seconds a collective may wait for its peers when `DISTILL_MPI_TIMEOUT` is not set.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// This process's place in the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// 0-based rank.
    pub rank: usize,
    /// Number of ranks.
    pub size: usize,
}

static PLACE: OnceLock<Place> = OnceLock::new();

/// The launcher variable that says this process was started by an MPI launcher, if any, with
/// its value.
pub fn launcher() -> Option<(&'static str, String)> {
    LAUNCHER_VARIABLES
        .iter()
        .find_map(|name| std::env::var(name).ok().map(|value| (*name, value)))
}

/// Whether this process is rank 0 of a world started by a launcher, judged from the launcher's
/// variables alone (usable before, or without, MPI).
#[cfg(not(feature = "mpi"))]
fn launcher_rank_is_zero() -> bool {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .find_map(|name| std::env::var(name).ok())
        .is_none_or(|rank| rank.trim() == "0")
}

/// Keeps MPI initialised; dropping it finalises MPI (at the end of `main`).
pub struct Session {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

/// Joins the MPI world when a launcher started this process. Without the `mpi` feature a
/// launched process ends here: rank 0 prints how to build the feature, every rank exits 2.
pub fn init() -> Session {
    let Some((variable, value)) = launcher() else {
        let _ = PLACE.set(Place { rank: 0, size: 1 });
        return Session {
            #[cfg(feature = "mpi")]
            _universe: None,
        };
    };
    #[cfg(feature = "mpi")]
    {
        let _ = (variable, value);
        let (universe, place) = world::init();
        let _ = PLACE.set(place);
        Session {
            _universe: Some(universe),
        }
    }
    #[cfg(not(feature = "mpi"))]
    {
        if launcher_rank_is_zero() {
            eprintln!(
                "error: this distill was started by an MPI launcher ({variable}={value}) but was built without MPI support, so every rank would train alone on the whole data. Rebuild it with `cargo build --release --features mpi` (needs the system MPI, e.g. `apt-get install libopenmpi-dev openmpi-bin libclang-dev`), or run it without mpirun."
            );
        }
        std::process::exit(2)
    }
}

/// Set when the ranks share a study's runs instead of each run's batches.
static INDEPENDENT: AtomicBool = AtomicBool::new(false);

/// This process's place in the MPI world (rank 0 of 1 before [`init`] or without MPI).
pub fn world() -> Place {
    *PLACE.get().unwrap_or(&Place { rank: 0, size: 1 })
}

/// This process's place among the ranks that train one run together: the whole world, or
/// rank 0 of 1 once [`train_runs_independently`] was called.
pub fn place() -> Place {
    if INDEPENDENT.load(Ordering::Relaxed) {
        Place { rank: 0, size: 1 }
    } else {
        world()
    }
}

/// From now on every rank trains its own runs alone (and writes their files): a study's runs
/// are spread over the ranks instead of each run's batches. Only [`barrier`] still spans the
/// world.
pub fn train_runs_independently() {
    INDEPENDENT.store(true, Ordering::Relaxed);
}

/// This process's rank among the ranks training one run (see [`place`]).
pub fn rank() -> usize {
    place().rank
}

/// The number of ranks training one run (see [`place`]).
pub fn size() -> usize {
    place().size
}

/// Whether this rank writes the run's files (logs, checkpoints, histories, caches, reports):
/// rank 0, or the only process.
pub fn is_root() -> bool {
    rank() == 0
}

/// Whether more than one rank shares the work.
pub fn is_parallel() -> bool {
    size() > 1
}

/// How long one collective may wait for the slowest rank.
pub fn timeout() -> Duration {
    let seconds = std::env::var("DISTILL_MPI_TIMEOUT")
        .ok()
        .and_then(|value| value.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS as f64);
    Duration::from_secs_f64(seconds)
}

/// Ends the whole job with `message` (one paragraph, from this rank): in a world of several
/// ranks every rank stops (MPI_Abort), so none waits for this one in a collective; alone, the
/// process exits with `code`.
pub fn fail(message: &str, code: i32) -> ! {
    let place = world();
    if place.size > 1 {
        // one write, so the launcher does not interleave the ranks' paragraphs
        let line = format!("error (rank {} of {}): {message}\n", place.rank, place.size);
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        #[cfg(feature = "mpi")]
        world::abort(code);
    }
    eprintln!("error: {message}");
    std::process::exit(code)
}

/// Sums `values` element-wise over the ranks, in place; every rank ends with the same sums.
/// `what` names the data in the timeout message.
pub fn all_reduce_sum(values: &mut [f32], what: &str) {
    if !is_parallel() {
        return;
    }
    #[cfg(feature = "mpi")]
    world::all_reduce_sum(values, what);
    #[cfg(not(feature = "mpi"))]
    let _ = (values, what);
}

/// [`all_reduce_sum`] from `send` into `received` (same length), with no copy of its own.
pub fn all_reduce_sum_into(send: &[f32], received: &mut [f32], what: &str) {
    if !is_parallel() {
        received.copy_from_slice(send);
        return;
    }
    #[cfg(feature = "mpi")]
    world::all_reduce_sum_into(send, received, what);
    #[cfg(not(feature = "mpi"))]
    let _ = what;
}

/// Rank 0's `values` on every rank.
pub fn broadcast(values: &mut [f32], what: &str) {
    if !is_parallel() {
        return;
    }
    #[cfg(feature = "mpi")]
    world::broadcast(values, what);
    #[cfg(not(feature = "mpi"))]
    let _ = (values, what);
}

/// Every rank's `value`, in rank order.
pub fn all_gather(value: u64, what: &str) -> Vec<u64> {
    if !is_parallel() {
        return vec![value];
    }
    #[cfg(feature = "mpi")]
    return world::all_gather(value, what);
    #[cfg(not(feature = "mpi"))]
    {
        let _ = what;
        vec![value]
    }
}

/// The concatenation, in rank order, of every rank's `local` rows, where rank `r` holds
/// `counts[r]` values.
pub fn all_gather_rows(local: &[f32], counts: &[usize], what: &str) -> Vec<f32> {
    if !is_parallel() {
        return local.to_vec();
    }
    #[cfg(feature = "mpi")]
    return world::all_gather_varcount(local, counts, what);
    #[cfg(not(feature = "mpi"))]
    {
        let _ = (counts, what);
        local.to_vec()
    }
}

/// Waits until every rank of the world gets here; `patient` waits as long as it takes (for a
/// peer that is training a teacher, say), otherwise [`timeout`] applies.
pub fn barrier(what: &str, patient: bool) {
    if world().size == 1 {
        return;
    }
    #[cfg(feature = "mpi")]
    world::barrier(what, patient);
    #[cfg(not(feature = "mpi"))]
    let _ = (what, patient);
}

/// Fails the job unless every rank computed the same `value` for `what` (a hash of the
/// config, of the data, of the binary): ranks that disagree would train different things.
pub fn agree(value: u64, what: &str) -> anyhow::Result<()> {
    let values = all_gather(value, what);
    if values.iter().all(|v| *v == values[0]) {
        return Ok(());
    }
    let differing: Vec<String> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != values[0])
        .map(|(rank, _)| rank.to_string())
        .collect();
    anyhow::bail!(
        "the ranks disagree on {what}: rank(s) {} differ from rank 0. Every rank must run the same distill binary with the same command line, config and data files",
        differing.join(", ")
    )
}

/// Fails the job unless every rank has the same `settings` (a config, rendered as text) and
/// runs the same binary: [`agree`] on both, `what` naming the settings.
pub fn agree_on_settings(settings: &str, what: &str) -> anyhow::Result<()> {
    agree(fnv1a(settings.as_bytes()), what)?;
    agree(binary_fingerprint(), "the distill binary")
}

/// What one process gets by running `compute` over every item in order (each call appends its
/// values to the buffer it is given). Under MPI each rank runs only its contiguous share of
/// `items` and the shares are gathered: the same calls on the same groups, so the same bits.
/// `values_per_item` tells every rank how many values any item yields.
pub fn compute_sharded<T>(
    items: &[T],
    values_per_item: impl Fn(&T) -> usize,
    mut compute: impl FnMut(&T, &mut Vec<f32>) -> anyhow::Result<()>,
    what: &str,
) -> anyhow::Result<Vec<f32>> {
    let place = place();
    let mut local = Vec::new();
    for item in shard_of(items, place.rank, place.size) {
        compute(item, &mut local)?;
    }
    let counts: Vec<usize> = (0..place.size)
        .map(|rank| {
            shard_of(items, rank, place.size)
                .iter()
                .map(&values_per_item)
                .sum()
        })
        .collect();
    Ok(all_gather_rows(&local, &counts, what))
}

/// This rank's contiguous part of `items` among the ranks training one run (all of them in a
/// world of one).
pub fn own_share<T>(items: &[T]) -> &[T] {
    let place = place();
    shard_of(items, place.rank, place.size)
}

/// This rank's contiguous part of `items` when `size` ranks split them as evenly as possible
/// (the first `len % size` ranks take one more).
pub fn shard_of<T>(items: &[T], rank: usize, size: usize) -> &[T] {
    let (start, end) = shard_range(items.len(), rank, size);
    &items[start..end]
}

/// The `[start, end)` of rank `rank`'s part of `len` items split over `size` ranks.
pub fn shard_range(len: usize, rank: usize, size: usize) -> (usize, usize) {
    let base = len / size;
    let extra = len % size;
    let start = rank * base + rank.min(extra);
    (start, start + base + usize::from(rank < extra))
}

/// A hash of this process's executable, so that ranks running different builds stop before
/// training (computed once).
pub fn binary_fingerprint() -> u64 {
    static FINGERPRINT: OnceLock<u64> = OnceLock::new();
    *FINGERPRINT.get_or_init(|| {
        std::env::current_exe()
            .and_then(std::fs::read)
            .map(|bytes| fnv1a(&bytes))
            .unwrap_or(0)
    })
}

/// A 64-bit FNV-1a hash, for [`agree`] (stable across processes and builds, unlike std's).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_items_in_order_and_differ_by_at_most_one() {
        for len in [0usize, 1, 5, 64, 65, 67] {
            for size in 1..=4 {
                let items: Vec<usize> = (0..len).collect();
                let parts: Vec<&[usize]> = (0..size).map(|r| shard_of(&items, r, size)).collect();
                let joined: Vec<usize> = parts.iter().flat_map(|p| p.iter().copied()).collect();
                assert_eq!(joined, items, "len {len} size {size}");
                let (min, max) = parts.iter().fold((usize::MAX, 0), |(lo, hi), p| {
                    (lo.min(p.len()), hi.max(p.len()))
                });
                assert!(max - min <= 1, "len {len} size {size}: {min}..{max}");
            }
        }
        // 65 over 2: rank 0 takes the extra item
        assert_eq!(shard_range(65, 0, 2), (0, 33));
        assert_eq!(shard_range(65, 1, 2), (33, 65));
    }

    #[test]
    fn a_process_without_a_launcher_is_a_world_of_one_whose_collectives_keep_their_data() {
        assert_eq!(place(), Place { rank: 0, size: 1 });
        let mut values = [1.5f32, -2.0];
        all_reduce_sum(&mut values, "test");
        broadcast(&mut values, "test");
        assert_eq!(values, [1.5, -2.0]);
        assert_eq!(all_gather(7, "test"), vec![7]);
        assert!(agree(7, "test").is_ok());
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // from the FNV reference (draft-eastlake-fnv): "" and "a"
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
