//! Warns when the build lost the `poly1305_backend`/`chacha20_backend = "soft"` cfgs that
//! `.cargo/config.toml` sets (an environment `RUSTFLAGS` replaces it): token
//! open would then be about 4x slower on x86-64 without AVX2 enabled
//! crate-wide. See docs/token-format.md, "Performance of the AEAD".
//!
//! Also turns the API contract `docs/openapi.yaml` into the JSON that
//! `GET /openapi.json` serves (a YAML mistake fails the build, not a request).

fn main() {
    openapi_json();
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

/// `docs/openapi.yaml` → `$OUT_DIR/openapi.json`.
fn openapi_json() {
    let src = "docs/openapi.yaml";
    println!("cargo:rerun-if-changed={src}");
    let text = std::fs::read_to_string(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    let doc: serde_json::Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{src}: {e}"));
    let out =
        std::path::Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|e| panic!("OUT_DIR: {e}"))).join("openapi.json");
    std::fs::write(&out, doc.to_string()).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}
