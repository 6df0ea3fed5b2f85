//! The `distill` command line; all the work lives in the library (see `distill::cli`).

fn main() -> std::process::ExitCode {
    distill::backend::tune_allocator();
    distill::cli::main()
}
