//! The MPI side of [`super`]: rsmpi's collectives, each started non-blocking and polled
//! against the deadline, because a blocking MPI collective waits forever for a hung peer.

use super::Place;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::request::{Request, Scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::time::{Duration, Instant};

/// Initialises MPI (funneled: only the main thread calls MPI; burn's worker threads never do)
/// and installs the panic hook that aborts the job instead of unwinding into MPI_Finalize.
pub(super) fn init() -> (mpi::environment::Universe, Place) {
    let Some((universe, _threading)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
    else {
        eprintln!("error: MPI was already initialised");
        std::process::exit(2)
    };
    let world = universe.world();
    let place = Place {
        rank: world.rank() as usize,
        size: world.size() as usize,
    };
    if place.size > 1 {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            abort(101);
        }));
        say_why_on_sigterm(place);
    }
    (universe, place)
}

/// The line a rank prints when the launcher stops it (see [`say_why_on_sigterm`]).
static TERMINATED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// When a rank dies, the launcher stops the others with SIGTERM (then SIGKILL a second later);
/// without a handler they vanish silently and only the launcher's banner names the failed rank.
/// With it each survivor says why it stops.
#[cfg(unix)]
fn say_why_on_sigterm(place: Place) {
    extern "C" fn on_sigterm(_: libc::c_int) {
        if let Some(line) = TERMINATED.get() {
            // SAFETY: write(2) and _exit(2) are async-signal-safe; the line is never freed
            unsafe {
                libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len());
                libc::_exit(143);
            }
        }
    }
    let _ = TERMINATED.set(
        format!(
            "error (rank {} of {}): stopped by the MPI launcher, because another rank failed or the job was cancelled (the launcher names the rank that failed); the last checkpoint is intact and resumes\n",
            place.rank, place.size
        )
        .into_bytes(),
    );
    // SAFETY: installs a handler that only reads the static line, writes and exits
    unsafe {
        libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t);
    }
}

#[cfg(not(unix))]
fn say_why_on_sigterm(_place: Place) {}

/// Stops every rank of the job with `code`, after a moment for the launcher to forward this
/// rank's last message (it is otherwise sometimes lost).
pub(super) fn abort(code: i32) -> ! {
    std::thread::sleep(Duration::from_millis(250));
    SimpleCommunicator::world().abort(code)
}

/// How long [`wait`] polls without sleeping.
const SPIN: Duration = Duration::from_millis(100);

/// Polls `request` until it completes; past the deadline (when there is one) the job is
/// aborted, since an incomplete request cannot be dropped.
fn wait<'a, D: ?Sized, S: Scope<'a>>(request: Request<'a, D, S>, what: &str, patient: bool) {
    let deadline = (!patient).then(super::timeout);
    let started = Instant::now();
    let mut pending = request;
    let mut pause = Duration::from_micros(20);
    loop {
        match pending.test() {
            Ok(_) => return,
            Err(request) => pending = request,
        }
        if let Some(limit) = deadline.filter(|limit| started.elapsed() > *limit) {
            eprintln!(
                "error (rank {} of {}): {what}: the other ranks did not answer within {:.0} s (DISTILL_MPI_TIMEOUT); a peer is hung, stopped or unreachable. Stopping the job; the last checkpoint is intact.",
                super::world().rank,
                super::world().size,
                limit.as_secs_f64()
            );
            abort(3);
        }
        // Open MPI advances a non-blocking collective only inside MPI calls, so a step's
        // all-reduce would stall while this rank sleeps: poll without sleeping at first
        // (yielding the core to anyone who needs it), then back off for long waits (a peer
        // evaluating, writing a checkpoint or training a teacher).
        if started.elapsed() < SPIN {
            std::thread::yield_now();
        } else {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
}

pub(super) fn all_reduce_sum(values: &mut [f32], what: &str) {
    let send = values.to_vec();
    all_reduce_sum_into(&send, values, what);
}

pub(super) fn all_reduce_sum_into(send: &[f32], received: &mut [f32], what: &str) {
    let world = SimpleCommunicator::world();
    mpi::request::scope(|scope| {
        let request =
            world.immediate_all_reduce_into(scope, send, received, SystemOperation::sum());
        wait(request, what, false);
    });
}

pub(super) fn broadcast(values: &mut [f32], what: &str) {
    let world = SimpleCommunicator::world();
    let root = world.process_at_rank(0);
    mpi::request::scope(|scope| {
        let request = root.immediate_broadcast_into(scope, values);
        wait(request, what, false);
    });
}

pub(super) fn all_gather(value: u64, what: &str) -> Vec<u64> {
    let world = SimpleCommunicator::world();
    let mut values = vec![0u64; world.size() as usize];
    mpi::request::scope(|scope| {
        let request = world.immediate_all_gather_into(scope, &value, &mut values[..]);
        wait(request, what, false);
    });
    values
}

pub(super) fn all_gather_varcount(local: &[f32], counts: &[usize], what: &str) -> Vec<f32> {
    let world = SimpleCommunicator::world();
    let total: usize = counts.iter().sum();
    let to_i32 = |n: usize| {
        i32::try_from(n).unwrap_or_else(|_| {
            super::fail(
                &format!("{what}: {n} values are more than one MPI call can move (2^31 - 1)"),
                2,
            )
        })
    };
    to_i32(total);
    let counts_i32: Vec<i32> = counts.iter().map(|&n| to_i32(n)).collect();
    let displs: Vec<i32> = counts_i32
        .iter()
        .scan(0i32, |offset, &n| {
            let start = *offset;
            *offset += n;
            Some(start)
        })
        .collect();
    let mut gathered = vec![0f32; total];
    {
        let mut partition = PartitionMut::new(&mut gathered[..], &counts_i32[..], &displs[..]);
        mpi::request::scope(|scope| {
            let request = world.immediate_all_gather_varcount_into(scope, local, &mut partition);
            wait(request, what, false);
        });
    }
    gathered
}

pub(super) fn barrier(what: &str, patient: bool) {
    let world = SimpleCommunicator::world();
    let request = world.immediate_barrier();
    wait(request, what, patient);
}
