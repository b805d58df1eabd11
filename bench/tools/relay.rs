//! The benchmark's floor: a plain TCP relay that parses nothing.
//!
//! `relay LISTEN_ADDR UPSTREAM_ADDR` accepts connections on LISTEN_ADDR and
//! copies bytes both ways to a fresh UPSTREAM_ADDR connection with
//! `tokio::io::copy_bidirectional`. It does not pool: one server connection per
//! client. `bench/run.py` measures its CPU per transaction next to the
//! poolers', as the kernel's share that every proxy pays.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: relay LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(&listen).await?;
    println!(
        "relay listening on {} -> {upstream}",
        listener.local_addr()?
    );
    loop {
        let (mut client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("relay: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            match TcpStream::connect(&upstream).await {
                Ok(mut server) => {
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                Err(e) => eprintln!("relay: connect {upstream}: {e}"),
            }
        });
    }
}
