//! Builds the C++ glue of the Nix plugin (`cpp/plugin.cc`, feature
//! `nix-plugin`). Without the feature this does nothing: the driver builds
//! without Nix.
//!
//! What it does with the feature:
//! - asks `pkg-config` for `nix-expr`, `nix-store` and `nix-main` (adding
//!   `/usr/lib/nix/pkgconfig`, where Debian puts the `.pc` files) for the
//!   version, the compiler flags (`-std=c++23` from 2.31, include dirs) and
//!   the libraries: the Nix found first on `PKG_CONFIG_PATH` is the one the
//!   plugin is built for;
//! - takes Nix's headers from the `.pc` include dirs (a Nix built from source:
//!   `include/nix/expr/...`), else from `$NIX_INCLUDE_DIR`, by default where
//!   `.ci/nix-headers` puts them for Debian's 2.8, which ships none
//!   (`/var/cache/nix-vmtest/nix-headers/<version>/include`, `nix/*.hh`);
//! - defines `NIX_VERSION_MAJOR`, `NIX_VERSION_MINOR`, `NIX_VERSION_PATCH` for
//!   `cpp/nix-compat.hh`, the one place where Nix's C++ API differences live;
//! - links the glue (with cxx's C++ runtime) into a shared object of its own,
//!   `libnix_vmtest_glue.so`, that the plugin embeds (`NIX_VMTEST_GLUE_SO`)
//!   and loads only after checking the running Nix's version
//!   (`src/plugin/loader.rs`): a glue linked into the plugin itself would be
//!   bound to Nix's symbols before any check could run;
//! - sets `NIX_VMTEST_NIX_VERSION` (the version the loader expects at run
//!   time: the .pc files' version, or `$NIX_VMTEST_EXPECT_NIX_VERSION` for a
//!   Nix whose `nixVersion` string differs) and, for Nix >= 2.22, the cfg
//!   `nix_plugin_entry` (register from Nix's `nix_plugin_entry()` hook).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(nix_plugin_entry)");
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
        for var in [
            "NIX_INCLUDE_DIR",
            "PKG_CONFIG_PATH",
            "NIX_VMTEST_EXPECT_NIX_VERSION",
        ] {
            println!("cargo:rerun-if-env-changed={var}");
        }
        println!("cargo:rerun-if-changed=cpp/plugin.cc");
        println!("cargo:rerun-if-changed=cpp/nix-compat.hh");
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
        const TESTED: &[(u32, u32)] = &[(2, 8), (2, 31), (2, 35)];
        if (major, minor) != (2, 8) && (major, minor) < (2, 28) {
            fail(format!(
                "Nix {version} is not supported: the plugin builds against Nix 2.8 and 2.28 and later"
            ));
        }
        if !TESTED.contains(&(major, minor)) {
            println!(
                "cargo:warning=nix-vmtest's plugin is tested against Nix 2.8, 2.31 and 2.35; \
                 Nix {version} is written for (cpp/nix-compat.hh) but not tested"
            );
        }
        // `-std=c++23` (2.31+) and other flags the .pc files ask for.
        let cflags =
            std::process::Command::new(env::var("PKG_CONFIG").unwrap_or("pkg-config".into()))
                .args(["--cflags", "nix-expr", "nix-store", "nix-main"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
        let mut std_flag = None;
        let mut other_flags = Vec::new();
        for f in cflags.split_whitespace() {
            if let Some(s) = f.strip_prefix("-std=") {
                // The newest standard any .pc asks for.
                if std_flag.as_deref().map_or(true, |old: &str| s > old) {
                    std_flag = Some(s.to_string());
                }
            } else if !f.starts_with("-I") {
                other_flags.push(f.to_string());
            }
        }

        let packaged = includes
            .iter()
            .any(|i| i.join("nix/expr/eval.hh").exists() || i.join("nix/eval.hh").exists());
        let header_dir = match env::var_os("NIX_INCLUDE_DIR") {
            Some(dir) => Some(PathBuf::from(dir)),
            None if packaged => None,
            None => Some(
                PathBuf::from(DEFAULT_HEADER_CACHE)
                    .join(&version)
                    .join("include"),
            ),
        };
        if let Some(dir) = &header_dir {
            if !dir.join("nix/eval.hh").exists() && !dir.join("nix/expr/eval.hh").exists() {
                fail(format!(
                    "Nix {version}'s headers are not at {} (Debian's nix-bin ships none). \
                     Run .ci/nix-headers to fetch them from Debian's source package, \
                     or set NIX_INCLUDE_DIR to a directory holding nix/eval.hh",
                    dir.display()
                ));
            }
        }

        // cxx's C++ runtime (rust::String, rust::Str, rust::Error): the
        // plugin's own copy is not exported, so the glue gets one.
        let cxx_cc = env::var_os("DEP_CXXBRIDGE1_HEADER")
            .map(PathBuf::from)
            .and_then(|h| Some(h.parent()?.parent()?.join("src/cxx.cc")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| fail("cannot find cxx's src/cxx.cc (DEP_CXXBRIDGE1_HEADER)".into()));

        let std = match std_flag {
            Some(s) => s,
            // Nix 2.8's headers are C++17 (and do not parse as C++20).
            None if (major, minor) < (2, 20) => "c++17".into(),
            None => "c++20".into(),
        };
        let mut build = cxx_build::bridge("src/plugin/ffi.rs");
        build
            .file("cpp/plugin.cc")
            .file(&cxx_cc)
            .std(&std)
            .pic(true)
            .warnings(false)
            .extra_warnings(false)
            .define("NIX_VERSION_MAJOR", major.to_string().as_str())
            .define("NIX_VERSION_MINOR", minor.to_string().as_str())
            .define("NIX_VERSION_PATCH", patch.to_string().as_str())
            // Linked below into the glue's shared object only.
            .cargo_metadata(false);
        if let Some(dir) = &header_dir {
            build.include(dir).include(dir.join("nix"));
        }
        for i in &includes {
            build.include(i);
        }
        for f in &other_flags {
            build.flag(f);
        }
        build.compile("nix_vmtest_glue");

        // The glue as a shared object. No RUNPATH: it is loaded into the
        // Nix it was built for, whose libraries are already loaded.
        let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let archive = out.join("libnix_vmtest_glue.a");
        let glue = out.join("libnix_vmtest_glue.so");
        let compiler = build.get_compiler();
        let mut link = compiler.to_command();
        link.arg("-shared")
            .arg("-o")
            .arg(&glue)
            .arg("-Wl,--whole-archive")
            .arg(&archive)
            .arg("-Wl,--no-whole-archive");
        for l in libs.iter().filter(|l| !l.starts_with("-Wl,-rpath")) {
            link.arg(l);
        }
        link.arg("-lstdc++");
        let status = link
            .status()
            .unwrap_or_else(|e| fail(format!("cannot run the C++ compiler to link the glue: {e}")));
        if !status.success() {
            fail(format!("linking {} failed: {link:?}", glue.display()));
        }
        println!("cargo:rustc-env=NIX_VMTEST_GLUE_SO={}", glue.display());
        // The loader compares this with the running Nix's `nix::nixVersion`.
        // A Nix whose version string differs from its .pc files' (a
        // vendor's build) says so here.
        let expected = env::var("NIX_VMTEST_EXPECT_NIX_VERSION").unwrap_or(version);
        println!("cargo:rustc-env=NIX_VMTEST_NIX_VERSION={expected}");
        if (major, minor) >= (2, 22) {
            println!("cargo:rustc-cfg=nix_plugin_entry");
        }
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
