//! How the plugin gets into Nix: check the running Nix's version, then load
//! the C++ glue and register `builtins.vmTest`.
//!
//! A plugin works only in the Nix version it was built for (Nix's C++ ABI
//! changes between releases; from 2.32 the sonames carry the full version).
//! So that a plugin loaded into another Nix says so instead of crashing, the
//! glue (`cpp/plugin.cc`, the only code that touches Nix's C++ API) is not
//! linked into the plugin: `build.rs` links it into a shared object of its
//! own, embedded here. When Nix loads the plugin:
//!
//! 1. a constructor (`.init_array`, so also on Nix 2.8, which has no
//!    `nix_plugin_entry`) reads the running Nix's version (`nix::nixVersion`,
//!    looked up by name, so nothing is bound before the check). A different
//!    version is one error naming both versions and what to rebuild, and
//!    Nix exits with status 1;
//! 2. the glue is loaded (from a memfd) and registers the builtin: from
//!    `nix_plugin_entry` on Nix >= 2.22, else at once.
//!
//! Linked into anything but the plugin (the driver, the tests), the
//! constructor does nothing.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::io::Write;
use std::sync::OnceLock;

/// The Nix version `build.rs` found with `pkg-config`.
pub const BUILT_FOR: &str = env!("NIX_VMTEST_NIX_VERSION");

/// `libnix_vmtest_glue.so`, built by `build.rs` for [`BUILT_FOR`].
static GLUE: &[u8] = include_bytes!(env!("NIX_VMTEST_GLUE_SO"));

/// `nix::nixVersion` (a `std::string`), the same in every Nix from 2.8 on.
const NIX_VERSION_SYMBOL: &CStr = c"_ZN3nix10nixVersionB5cxx11E";

/// The glue's entry point (`cpp/plugin.cc`).
const GLUE_REGISTER: &CStr = c"nix_vmtest_glue_register";

#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

/// The plugin's own file, when this code runs in the plugin (`.so`), not in
/// an executable that links the library.
fn plugin_file() -> Option<String> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address and fills `info`.
    let found = unsafe { libc::dladdr(on_load as *const c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returns a NUL-terminated file name owned by the loader.
    let name = unsafe { CStr::from_ptr(info.dli_fname) }
        .to_string_lossy()
        .into_owned();
    name.ends_with(".so").then_some(name)
}

/// The running Nix's version, read from `nix::nixVersion`.
fn running_nix_version() -> Option<String> {
    // SAFETY: a lookup by name in the process's global scope.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, NIX_VERSION_SYMBOL.as_ptr()) };
    if sym.is_null() {
        return None;
    }
    // libstdc++'s std::string (the C++11 ABI every Nix uses): a pointer to
    // the characters, then the length.
    // SAFETY: the symbol is a constructed std::string in the running Nix
    // (plugins are loaded after static initialisation).
    unsafe {
        let ptr = *(sym as *const *const u8);
        let len = *(sym as *const usize).add(1);
        if ptr.is_null() || len > 256 {
            return None;
        }
        let bytes = std::slice::from_raw_parts(ptr, len);
        Some(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// What the user sees when the plugin and Nix do not match.
pub fn mismatch_message(plugin: &str, running: &str) -> String {
    format!(
        "error: nix-vmtest: the plugin {plugin} was built for Nix {BUILT_FOR}, but this is Nix \
         {running}; a plugin only loads into the Nix it was built for. Rebuild it against Nix \
         {running}: `cargo build --release --features nix-plugin` with that Nix's .pc files first \
         on PKG_CONFIG_PATH (in this repository: `.ci/with-nix {running} cargo build --release \
         --features nix-plugin`), or with Nix: `nix/package.nix` with `nix` set to that Nix."
    )
}

/// Stops Nix with `message` (we are inside its plugin loading: no Nix
/// error can be thrown without its C++ ABI, which is the thing that differs).
fn die(message: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "{message}");
    // SAFETY: ends the process without running destructors of a Nix whose
    // state we did not touch.
    unsafe { libc::_exit(1) }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns a thread-local message or null.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: a NUL-terminated string from the loader.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// The glue, loaded once.
static GLUE_HANDLE: OnceLock<usize> = OnceLock::new();

fn load_glue(plugin: &str) -> *mut c_void {
    let handle = *GLUE_HANDLE.get_or_init(|| {
        // The glue calls the bridge functions (`nix_vmtest$cxxbridge1$...`)
        // this library exports: make them visible to it.
        let me = std::ffi::CString::new(plugin).unwrap_or_default();
        // SAFETY: re-opening an already loaded object with RTLD_NOLOAD.
        unsafe {
            libc::dlopen(
                me.as_ptr(),
                libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_GLOBAL,
            )
        };
        // SAFETY: memfd_create with a constant name.
        let fd: c_int =
            unsafe { libc::memfd_create(c"nix-vmtest-glue".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            die(&format!(
                "error: nix-vmtest: cannot load the plugin's glue (memfd_create: {})",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh fd we own.
        let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        if let Err(e) = file.write_all(GLUE) {
            die(&format!(
                "error: nix-vmtest: cannot load the plugin's glue: {e}"
            ));
        }
        let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default();
        // SAFETY: loading the glue built with this plugin for this Nix.
        let h = unsafe { libc::dlopen(path.as_ptr() as *const c_char, libc::RTLD_NOW) };
        drop(file);
        if h.is_null() {
            die(&format!(
                "error: nix-vmtest: cannot load the plugin's glue into Nix {BUILT_FOR}: {}",
                dlerror()
            ));
        }
        h as usize
    });
    handle as *mut c_void
}

fn register(plugin: &str) {
    let h = load_glue(plugin);
    // SAFETY: a lookup in the glue we just loaded.
    let f = unsafe { libc::dlsym(h, GLUE_REGISTER.as_ptr()) };
    if f.is_null() {
        die(&format!(
            "error: nix-vmtest: the plugin's glue has no entry point: {}",
            dlerror()
        ));
    }
    // SAFETY: `extern "C" void nix_vmtest_glue_register()` in cpp/plugin.cc.
    let f = unsafe { std::mem::transmute::<*mut c_void, extern "C" fn()>(f) };
    f();
}

extern "C" fn on_load() {
    let Some(plugin) = plugin_file() else { return };
    match running_nix_version() {
        Some(running) if running == BUILT_FOR => {}
        Some(running) => die(&mismatch_message(&plugin, &running)),
        None => die(&format!(
            "error: nix-vmtest: the plugin {plugin} (built for Nix {BUILT_FOR}) is loaded into a \
             process that is not Nix, or a Nix whose version it cannot read (no nix::nixVersion)"
        )),
    }
    #[cfg(not(nix_plugin_entry))]
    register(&plugin);
}

/// Called by Nix >= 2.22 after loading the plugin (and after the
/// constructor has checked the version).
#[cfg(nix_plugin_entry)]
#[no_mangle]
pub extern "C" fn nix_plugin_entry() {
    if let Some(plugin) = plugin_file() {
        register(&plugin);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mismatch_message_names_both_versions_and_what_to_rebuild() {
        let m = super::mismatch_message("/x/libnix_vmtest.so", "9.9.9");
        assert!(m.contains(super::BUILT_FOR), "{m}");
        assert!(m.contains("this is Nix 9.9.9"), "{m}");
        assert!(m.contains("Rebuild it against Nix 9.9.9"), "{m}");
        assert!(m.contains("/x/libnix_vmtest.so"), "{m}");
    }
}
