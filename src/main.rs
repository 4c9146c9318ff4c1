fn main() -> std::process::ExitCode {
    lanceferry::cli::main()
}
