//! The `cairn` command line. Library errors are typed; here they become
//! messages and exit codes (see [`cli::exit`]).

mod cli;

fn main() {
    std::process::exit(cli::main());
}
