//! `memcg-sim`: the command-line glue; everything else is in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    match memcg_sim::run(std::env::args_os()) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = memcg_sim::error_exit_code(&err);
            if code != memcg_sim::exit::OK {
                eprintln!("memcg-sim: {err:#}");
            }
            ExitCode::from(code)
        }
    }
}
