fn main() -> std::process::ExitCode {
    mailpack::cli::main()
}
