//! Built WITHOUT MPI: how a non-`mpi` binary can tell it was launched by mpirun/srun.
fn mpi_launcher() -> Option<String> {
    // Open MPI (mpirun/orterun 4.x, prterun 5.x), PMIx (Open MPI 4/5, srun --mpi=pmix),
    // MPICH/Hydra (PMI_RANK, PMI_SIZE), Slurm PMI2 (PMI_RANK), Intel MPI (PMI_RANK/MPI_LOCALRANKID)
    for k in ["OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"] {
        if let Ok(v) = std::env::var(k) {
            return Some(format!("{k}={v}"));
        }
    }
    None
}
fn main() {
    match mpi_launcher() {
        Some(why) => {
            eprintln!("error: this binary was started by an MPI launcher ({why}) but was built without MPI support; rebuild with `cargo build --release --features mpi`");
            std::process::exit(2);
        }
        None => println!("not under MPI"),
    }
}
