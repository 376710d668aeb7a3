//! Builds the C++ glue of the Nix plugin (`cpp/plugin.cc`, feature
//! `nix-plugin`). Without the feature this does nothing: the driver builds
//! without Nix.
//!
//! What it does with the feature:
//! - asks `pkg-config` for `nix-expr`, `nix-store` and `nix-main` (adding
//!   `/usr/lib/nix/pkgconfig`, where Debian puts the `.pc` files) for the
//!   version, include flags and libraries;
//! - adds Nix's headers from `$NIX_INCLUDE_DIR`, by default where
//!   `.ci/nix-headers` puts them (`/var/cache/nix-vmtest/nix-headers/<version>/include`,
//!   laid out as `nix/*.hh` with a `nix/config.h`): Debian ships no headers;
//! - defines `NIX_VERSION_MAJOR`, `NIX_VERSION_MINOR`, `NIX_VERSION_PATCH` for
//!   the `#if`s in `cpp/plugin.cc` where Nix's C++ API moved;
//! - links the glue into the cdylib only, with `--whole-archive`, so the
//!   object holding the static `RegisterPrimOp` is kept. The driver binary
//!   and the tests do not link the glue and so need no Nix.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "nix-plugin")]
    plugin::build();
}

#[cfg(feature = "nix-plugin")]
mod plugin {
    use std::env;
    use std::path::PathBuf;

    const DEFAULT_HEADER_CACHE: &str = "/var/cache/nix-vmtest/nix-headers";

    fn fail(message: String) -> ! {
        // A panic in a build script prints the message; say what to do.
        panic!("\n\nnix-vmtest plugin build: {message}\n\n");
    }

    pub fn build() {
        for var in ["NIX_INCLUDE_DIR", "PKG_CONFIG_PATH"] {
            println!("cargo:rerun-if-env-changed={var}");
        }
        println!("cargo:rerun-if-changed=cpp/plugin.cc");
        println!("cargo:rerun-if-changed=src/plugin/ffi.rs");

        let mut pc_path = env::var("PKG_CONFIG_PATH").unwrap_or_default();
        if !pc_path.split(':').any(|p| p == "/usr/lib/nix/pkgconfig") {
            if !pc_path.is_empty() {
                pc_path.push(':');
            }
            pc_path.push_str("/usr/lib/nix/pkgconfig");
        }
        env::set_var("PKG_CONFIG_PATH", &pc_path);

        let mut libs = Vec::new();
        let mut includes = Vec::new();
        let mut version = String::new();
        for name in ["nix-expr", "nix-store", "nix-main"] {
            let lib = pkg_config::Config::new()
                .cargo_metadata(false)
                .probe(name)
                .unwrap_or_else(|e| {
                    fail(format!(
                        "pkg-config cannot find {name} ({e}); install Nix (Debian: nix-bin) \
                         or set PKG_CONFIG_PATH to the directory holding {name}.pc"
                    ))
                });
            if version.is_empty() {
                version = lib.version.clone();
            }
            for p in lib.link_paths {
                if !libs.contains(&format!("-L{}", p.display())) {
                    libs.push(format!("-L{}", p.display()));
                    libs.push(format!("-Wl,-rpath,{}", p.display()));
                }
            }
            for l in lib.libs {
                libs.push(format!("-l{l}"));
            }
            includes.extend(lib.include_paths);
        }
        let (major, minor, patch) = parse_version(&version)
            .unwrap_or_else(|| fail(format!("cannot read Nix version {version:?}")));

        if (major, minor) != (2, 8) {
            println!(
                "cargo:warning=nix-vmtest's plugin has been built and tested against Nix 2.8 only; \
                 Nix {version} may need the #if branches in cpp/plugin.cc adjusted"
            );
        }

        let header_dir = match env::var_os("NIX_INCLUDE_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(DEFAULT_HEADER_CACHE)
                .join(&version)
                .join("include"),
        };
        let probe = if (major, minor) >= (2, 28) {
            header_dir.join("nix/expr/eval.hh")
        } else {
            header_dir.join("nix/eval.hh")
        };
        let packaged = includes
            .iter()
            .any(|i| i.join("eval.hh").exists() || i.join("nix/eval.hh").exists());
        if !probe.exists() && !packaged {
            fail(format!(
                "Nix {version}'s headers are not at {} (Debian's nix-bin ships none). \
                 Run .ci/nix-headers to fetch them from Debian's source package, \
                 or set NIX_INCLUDE_DIR to a directory holding nix/eval.hh",
                header_dir.display()
            ));
        }

        let mut build = cxx_build::bridge("src/plugin/ffi.rs");
        build
            .file("cpp/plugin.cc")
            // Nix 2.8's headers are C++17 (and do not parse as C++20); newer Nix needs C++20.
            .std(if (major, minor) >= (2, 20) {
                "c++20"
            } else {
                "c++17"
            })
            .warnings(false)
            .extra_warnings(false)
            .include(&header_dir)
            .include(header_dir.join("nix"))
            .define("NIX_VERSION_MAJOR", major.to_string().as_str())
            .define("NIX_VERSION_MINOR", minor.to_string().as_str())
            .define("NIX_VERSION_PATCH", patch.to_string().as_str())
            // Linked below into the cdylib only.
            .cargo_metadata(false);
        for i in &includes {
            build.include(i);
        }
        build.compile("nix_vmtest_glue");

        let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let archive = out.join("libnix_vmtest_glue.a");
        println!("cargo:rustc-link-arg-cdylib=-Wl,--whole-archive");
        println!("cargo:rustc-link-arg-cdylib={}", archive.display());
        println!("cargo:rustc-link-arg-cdylib=-Wl,--no-whole-archive");
        for l in &libs {
            println!("cargo:rustc-link-arg-cdylib={l}");
        }
        println!("cargo:rustc-link-arg-cdylib=-lstdc++");
        println!("cargo:rustc-env=NIX_VMTEST_NIX_VERSION={version}");
    }

    fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
        let mut parts = v
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some((major, minor, patch))
    }
}
