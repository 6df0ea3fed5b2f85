//! MPI feasibility probe (rsmpi 0.8.2, Open MPI 4.1.4).
//!
//! usage: mpirun -np 2 ... ./target/release/mpi-probe [MODE] [ARGS]
//!   basic                 all-reduce (sum, average) check, broadcast, all-gather, bandwidth sweep
//!   die-exit              rank 1 calls process::exit(3) (no MPI_Finalize) before an all-reduce
//!   die-exit0             rank 1 calls process::exit(0) (no MPI_Finalize) before an all-reduce
//!   die-panic             rank 1 panics (Universe dropped while unwinding -> MPI_Finalize)
//!   die-panic-hook        same, with a panic hook that calls MPI_Abort
//!   die-kill              rank 1 sends SIGKILL to itself after 5 all-reduces
//!   die-kill-ret          same, but MPI_ERRORS_RETURN is set on COMM_WORLD and raw MPI_Allreduce is used
//!   stop                  rank 1 SIGSTOPs itself (a hung peer); rank 0 polls an Iallreduce with a deadline
//!   stop-watchdog         rank 1 SIGSTOPs itself; rank 0 is in a blocking all-reduce, a watchdog thread aborts
//!   barrier-timeout SECS  rank 1 sleeps 20 s before the barrier; rank 0 uses Ibarrier + MPI_Test with a deadline
//!   env                   print the OMPI_/PMIX_ environment each rank sees
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::ffi;
use mpi::traits::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

macro_rules! say {
    ($rank:expr, $($arg:tt)*) => {{
        eprintln!("[rank {} t={}] {}", $rank, now_ms(), format!($($arg)*));
    }};
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "basic".into());
    let t_init = Instant::now();
    let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
        .expect("MPI already initialised");
    let init_s = t_init.elapsed().as_secs_f64();
    let world = universe.world();
    let rank = world.rank();
    let size = world.size();
    if rank == 0 {
        let (maj, min) = mpi::environment::version();
        let lib = mpi::environment::library_version().unwrap_or_default();
        say!(rank, "world size {size}, MPI {maj}.{min}, threading {threading:?}, init {init_s:.3}s");
        say!(rank, "library: {}", lib.lines().next().unwrap_or("").trim_end_matches('\0').trim());
    }
    if mode == "die-panic-hook" {
        // A panic must never unwind into Universe::drop (MPI_Finalize waits for the peers -> hang).
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            std::thread::sleep(Duration::from_millis(200)); // let mpirun forward the message
            unsafe { ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, 101) };
        }));
    }
    match mode.as_str() {
        "basic" => basic(&universe),
        "die-exit" | "die-exit0" | "die-panic" | "die-panic-hook" => die_early(&universe, &mode),
        "die-kill" => die_kill(&universe, false),
        "die-kill-ret" => die_kill(&universe, true),
        "stop" => stop_poll(&universe),
        "stop-watchdog" => stop_watchdog(&universe),
        "barrier-timeout" => {
            let secs: f64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
            barrier_timeout(&universe, secs)
        }
        "env" => {
            let mut v: Vec<_> = std::env::vars()
                .filter(|(k, _)| k.starts_with("OMPI_") || k.starts_with("PMIX_") || k.starts_with("OPAL_"))
                .collect();
            v.sort();
            for (k, val) in v {
                println!("rank {rank}: {k}={val}");
            }
        }
        m => panic!("unknown mode {m}"),
    }
    if rank == 0 {
        say!(rank, "done, finalizing");
    }
}

fn basic(universe: &Universe) {
    let world = universe.world();
    let rank = world.rank();
    let size = world.size() as usize;
    let n = 1_000_000usize;
    let send: Vec<f32> = (0..n).map(|i| (rank as f32 + 1.0) * i as f32).collect();
    let mut recv = vec![0f32; n];
    world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
    // sum over ranks of (r+1)*i = i * size*(size+1)/2 ; exact in f32 while < 2^24, check relative error
    let k = (size * (size + 1) / 2) as f64;
    let mut max_rel = 0f64;
    for (i, &v) in recv.iter().enumerate() {
        let want = k * i as f64;
        let rel = if want == 0.0 { v.abs() as f64 } else { ((v as f64 - want) / want).abs() };
        max_rel = max_rel.max(rel);
    }
    let avg: Vec<f32> = recv.iter().map(|v| v / size as f32).collect();
    let avg_want = k / size as f64 * 999_999.0;
    say!(rank, "all-reduce sum: max rel err {max_rel:e}; average[last]={} (want {avg_want})", avg[n - 1]);
    assert!(max_rel < 1e-6, "all-reduce wrong");
    // bit-identical across ranks? gather a checksum of the bits
    let h = recv.iter().fold(0u64, |h, v| h.wrapping_mul(1_000_003).wrapping_add(v.to_bits() as u64));
    let mut hs = vec![0u64; size];
    world.all_gather_into(&h, &mut hs[..]);
    say!(rank, "all-gather of result hashes: {:x?} (identical: {})", hs, hs.iter().all(|&x| x == hs[0]));

    // bit-identical results across ranks with inexact (random) floats?
    let mut x = 0x9E3779B97F4A7C15u64 ^ (rank as u64 + 1).wrapping_mul(0xD1B54A32D192ED03);
    let rnd: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 1e-3 * (1.0 + (x & 7) as f32)
        })
        .collect();
    let mut rr = vec![0f32; n];
    world.all_reduce_into(&rnd[..], &mut rr[..], SystemOperation::sum());
    let h = rr.iter().fold(0u64, |h, v| h.wrapping_mul(1_000_003).wrapping_add(v.to_bits() as u64));
    world.all_gather_into(&h, &mut hs[..]);
    say!(rank, "random floats: all-reduce results bit-identical on all ranks: {}", hs.iter().all(|&x| x == hs[0]));

    // broadcast from rank 0
    let mut b: Vec<f32> = if rank == 0 { (0..1000).map(|i| i as f32 * 0.5).collect() } else { vec![-1.0; 1000] };
    world.process_at_rank(0).broadcast_into(&mut b[..]);
    assert!(b.iter().enumerate().all(|(i, &v)| v == i as f32 * 0.5));
    say!(rank, "broadcast ok");

    // all-gather of a small buffer
    let mine = [rank as u32 * 10, rank as u32 * 10 + 1, rank as u32 * 10 + 2];
    let mut all = vec![0u32; 3 * size];
    world.all_gather_into(&mine[..], &mut all[..]);
    assert!(all.chunks(3).enumerate().all(|(r, c)| c == [r as u32 * 10, r as u32 * 10 + 1, r as u32 * 10 + 2]));
    say!(rank, "all-gather ok: {:?}", all);

    // bandwidth sweep, 20 reps each after 2 warm-ups
    let counts: Vec<usize> = std::env::var("SIZES")
        .map(|v| v.split(',').map(|x| x.parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![1_000, 16_000, 68_000, 250_000, 1_000_000, 4_000_000, 16_000_000]);
    for &count in &counts {
        let s = vec![1f32; count];
        let mut r = vec![0f32; count];
        for _ in 0..2 {
            world.all_reduce_into(&s[..], &mut r[..], SystemOperation::sum());
        }
        world.barrier();
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            world.all_reduce_into(&s[..], &mut r[..], SystemOperation::sum());
        }
        let dt = t.elapsed().as_secs_f64() / reps as f64;
        // take the slowest rank's time
        let mut dts = vec![0f64; size];
        world.all_gather_into(&dt, &mut dts[..]);
        let dt = dts.iter().cloned().fold(0.0, f64::max);
        let bytes = (count * 4) as f64;
        if rank == 0 {
            println!(
                "allreduce f32 x {count:>9} ({:>8.3} MB): {:>9.3} ms/op  algbw {:>8.1} MB/s  busbw {:>8.1} MB/s",
                bytes / 1e6,
                dt * 1e3,
                bytes / dt / 1e6,
                bytes / dt / 1e6 * 2.0 * (size as f64 - 1.0) / size as f64
            );
        }
        assert!(r[0] == size as f32);
    }
}

fn die_early(universe: &Universe, mode: &str) {
    let world = universe.world();
    let rank = world.rank();
    world.barrier();
    if rank == 1 {
        say!(rank, "dying now ({mode})");
        match mode {
            "die-exit" => std::process::exit(3),
            "die-exit0" => std::process::exit(0),
            _ => panic!("rank 1 panics on purpose"),
        }
    }
    let s = vec![1f32; 1_000_000];
    let mut r = vec![0f32; 1_000_000];
    say!(rank, "entering all-reduce");
    let t = Instant::now();
    world.all_reduce_into(&s[..], &mut r[..], SystemOperation::sum());
    say!(rank, "all-reduce RETURNED after {:.3}s (r[0]={})", t.elapsed().as_secs_f64(), r[0]);
}

fn die_kill(universe: &Universe, errors_return: bool) {
    let world = universe.world();
    let rank = world.rank();
    if errors_return {
        let rc = unsafe { ffi::MPI_Comm_set_errhandler(ffi::RSMPI_COMM_WORLD, ffi::RSMPI_ERRORS_RETURN) };
        say!(rank, "MPI_Comm_set_errhandler(ERRORS_RETURN) rc={rc}");
    }
    let n = 1_000_000usize;
    let s = vec![1f32; n];
    let mut r = vec![0f32; n];
    for it in 0.. {
        if rank == 1 && it == 5 {
            say!(rank, "SIGKILL self");
            let _ = std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status();
            std::thread::sleep(Duration::from_secs(10));
        }
        let t = Instant::now();
        if errors_return {
            let rc = unsafe {
                ffi::MPI_Allreduce(
                    s.as_ptr() as *const _,
                    r.as_mut_ptr() as *mut _,
                    n as i32,
                    ffi::RSMPI_FLOAT,
                    ffi::RSMPI_SUM,
                    ffi::RSMPI_COMM_WORLD,
                )
            };
            if rc != 0 {
                say!(rank, "MPI_Allreduce returned error code {rc} after {:.3}s at iteration {it}", t.elapsed().as_secs_f64());
                std::process::exit(2);
            }
        } else {
            world.all_reduce_into(&s[..], &mut r[..], SystemOperation::sum());
        }
        if t.elapsed() > Duration::from_millis(500) {
            say!(rank, "iteration {it} took {:.3}s", t.elapsed().as_secs_f64());
        }
        if it >= 5 && rank == 0 && it % 50 == 0 {
            say!(rank, "still iterating: {it}");
        }
        if it > 100_000 {
            break;
        }
    }
}

/// A collective with a deadline: start the non-blocking version, poll MPI_Test, abort on timeout.
fn wait_with_deadline<'a, D: ?Sized, S: mpi::request::Scope<'a>>(
    req: mpi::request::Request<'a, D, S>,
    deadline: Duration,
    what: &str,
    world: &mpi::topology::SimpleCommunicator,
) {
    let t = Instant::now();
    let mut req = Some(req);
    let mut spins = 0u64;
    loop {
        match req.take().unwrap().test() {
            Ok(_status) => {
                say!(world.rank(), "{what} completed after {:.3}s ({spins} polls)", t.elapsed().as_secs_f64());
                return;
            }
            Err(r) => req = Some(r),
        }
        spins += 1;
        if t.elapsed() > deadline {
            say!(world.rank(), "{what}: no completion after {:.1}s -> MPI_Abort(world, 7)", deadline.as_secs_f64());
            // Request dropped without completion would panic in rsmpi (drop guard); abort first.
            // Give mpirun's output forwarding a moment, or the message above may be lost.
            std::thread::sleep(Duration::from_millis(300));
            world.abort(7);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn stop_poll(universe: &Universe) {
    let world = universe.world();
    let rank = world.rank();
    world.barrier();
    if rank == 1 {
        say!(rank, "SIGSTOP self");
        let _ = std::process::Command::new("kill").args(["-STOP", &std::process::id().to_string()]).status();
    }
    let n = 1_000_000usize;
    let s = vec![1f32; n];
    let mut r = vec![0f32; n];
    mpi::request::scope(|sc| {
        let req = world.immediate_all_reduce_into(sc, &s[..], &mut r[..], SystemOperation::sum());
        wait_with_deadline(req, Duration::from_secs(5), "Iallreduce", &world);
    });
}

fn stop_watchdog(universe: &Universe) {
    let world = universe.world();
    let rank = world.rank();
    world.barrier();
    if rank == 1 {
        say!(rank, "SIGSTOP self");
        let _ = std::process::Command::new("kill").args(["-STOP", &std::process::id().to_string()]).status();
    }
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let how = std::env::var("WATCHDOG").unwrap_or_else(|_| "exit".into());
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(5));
        if !d2.load(Ordering::SeqCst) {
            eprintln!("[rank {rank} t={}] watchdog: collective stuck for 5 s; {how}", now_ms());
            if how == "abort" {
                // MPI_Abort from a non-main thread (only legal with MPI_THREAD_MULTIPLE in theory)
                unsafe { ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, 8) };
            }
            std::process::exit(8);
        }
    });
    let s = vec![1f32; 1_000_000];
    let mut r = vec![0f32; 1_000_000];
    world.all_reduce_into(&s[..], &mut r[..], SystemOperation::sum());
    done.store(true, Ordering::SeqCst);
}

fn barrier_timeout(universe: &Universe, secs: f64) {
    let world = universe.world();
    let rank = world.rank();
    if rank == 1 {
        let late: u64 = std::env::var("LATE").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
        say!(rank, "sleeping {late} s before the barrier");
        std::thread::sleep(Duration::from_secs(late));
    }
    let req = world.immediate_barrier();
    wait_with_deadline(req, Duration::from_secs_f64(secs), "Ibarrier", &world);
}
