//! Links the unwinder statically (libgcc_eh) instead of the shared libgcc_s.
//!
//! std asks for `-lgcc_s` on linux-gnu. Loading that library and running its constructor
//! (`__cpu_indicator_init`, whose `cpuid` instructions trap to the hypervisor on a VM) is a
//! fixed cost of every process start, and the one-shot CLI is started often: by the timers,
//! by scripts and as each account's worker. Offering the linker a `libgcc_s.so` that is a
//! script naming the static archive makes it take the unwinder from libgcc_eh, as a
//! `+crt-static` build does, while glibc stays shared (so NSS modules load as usual).
//! The effect is measured in docs/PERFORMANCE.md ("2026-12-02, noon").

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let static_crt = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default().contains("crt-static");
    if os != "linux" || env != "gnu" || static_crt {
        return;
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("static-unwind");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/static-unwind");
    std::fs::write(dir.join("libgcc_s.so"), "INPUT(-lgcc_eh)\n").expect("write OUT_DIR/static-unwind/libgcc_s.so");
    println!("cargo:rustc-link-search=native={}", dir.display());
}
