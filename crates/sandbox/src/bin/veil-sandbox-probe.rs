//! Tries one thing a confined program must not be able to do, for the sandbox's tests:
//! `read PATH`, `write PATH`, `connect HOST:PORT` (TCP) or `send HOST:PORT` (UDP). Prints
//! what happened; exits 0 when the attempt succeeded and 3 when it failed.

use std::io::{Read, Write};

fn attempt(what: &str, target: &str) -> std::io::Result<String> {
    match what {
        "read" => {
            let mut text = String::new();
            std::fs::File::open(target)?.read_to_string(&mut text)?;
            Ok(format!("read {} bytes", text.len()))
        }
        "write" => {
            std::fs::File::create(target)?.write_all(b"escaped")?;
            Ok("wrote".into())
        }
        "connect" => {
            let timeout = std::time::Duration::from_secs(2);
            let addr = target.parse().map_err(std::io::Error::other)?;
            let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
            s.write_all(b"escaped")?;
            Ok("connected".into())
        }
        "send" => {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.send_to(b"escaped", target)?;
            Ok("sent".into())
        }
        other => Err(std::io::Error::other(format!("unknown attempt {other:?}"))),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [what, target] = args.as_slice() else {
        eprintln!("usage: veil-sandbox-probe read|write|connect|send TARGET");
        std::process::exit(2);
    };
    match attempt(what, target) {
        Ok(done) => println!("{done}"),
        Err(e) => {
            println!("refused: {e}");
            std::process::exit(3);
        }
    }
}
