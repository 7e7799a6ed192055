//! Warns when the build lost the `poly1305_backend`/`chacha20_backend = "soft"` cfgs that
//! `.cargo/config.toml` sets (an environment `RUSTFLAGS` replaces it): token
//! open would then be about 4x slower on x86-64 without AVX2 enabled
//! crate-wide. See docs/token-format.md, "Performance of the AEAD".

fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let x86 = arch == "x86_64" || arch == "x86";
    let avx2_everywhere = features.split(',').any(|f| f == "avx2");
    let soft = flags.contains("poly1305_backend=\"soft\"") && flags.contains("chacha20_backend=\"soft\"");
    if x86 && !avx2_everywhere && !soft {
        println!(
            "cargo:warning=twintoken: built without --cfg poly1305_backend=\"soft\" --cfg chacha20_backend=\"soft\" (RUSTFLAGS overrides .cargo/config.toml); \
             token open will be ~4x slower. Add it to your RUSTFLAGS, see docs/token-format.md"
        );
    }
}
