//! Files between host and guest: copies through the shared directory
//! (9p tag `shared`, `/tmp/shared` in the guest), and screenshots.

use std::path::{Path, PathBuf};

use super::shell;
use super::{Machine, MachineError};

impl Machine {
    /// Saves the screen as PNG; a name without `/` goes to the output directory.
    pub async fn screenshot(&mut self, filename: &str) -> Result<PathBuf, MachineError> {
        let mut name = filename.to_string();
        if !name.contains('.') {
            name.push_str(".png");
        }
        let path = if name.contains('/') {
            PathBuf::from(name)
        } else {
            self.cfg.out_dir.join(name)
        };
        let answer = self
            .send_monitor_command(&format!("screendump {} -f png", path.display()))
            .await?;
        if !path.exists() {
            return Err(MachineError::Failed {
                name: self.name.clone(),
                message: format!(
                    "screenshot {} was not written: {} (does the machine have a display device, e.g. -vga std?)",
                    path.display(),
                    answer.trim()
                ),
            });
        }
        Ok(path)
    }

    /// Copies a host file or directory into the guest (through the shared dir).
    pub async fn copy_from_host(
        &mut self,
        source: &Path,
        target: &str,
    ) -> Result<(), MachineError> {
        if !source.exists() {
            return Err(MachineError::Usage {
                name: self.name.clone(),
                message: format!(
                    "copy_from_host: {} does not exist on the host",
                    source.display()
                ),
            });
        }
        self.transfers += 1;
        let inter = format!("xfer-{}", self.transfers);
        let host_dir = self.shared_dir().join(&inter);
        std::fs::create_dir_all(&host_dir)
            .map_err(self.io_err("preparing the shared directory"))?;
        let base = source
            .file_name()
            .map(|b| b.to_string_lossy().to_string())
            .unwrap_or_else(|| "file".into());
        copy_tree(source, &host_dir.join(&base))
            .map_err(self.io_err("copying into the shared directory"))?;
        let t = shell::shell_quote(target);
        let cmd = format!(
            "mkdir -p \"$(dirname {t})\" && cp -r {} {t}",
            shell::shell_quote(&format!("/tmp/shared/{inter}/{base}"))
        );
        let out = self.execute(&cmd, None, true).await?;
        let _ = std::fs::remove_dir_all(&host_dir);
        if out.status != 0 {
            return Err(MachineError::Failed {
                name: self.name.clone(),
                message: format!(
                    "copy_from_host: copying to {target} failed (exit code {}); is /tmp/shared (9p tag `shared`) mounted in the guest?",
                    out.status
                ),
            });
        }
        Ok(())
    }

    /// Copies a guest file or directory into `out_dir/target_dir`.
    pub async fn copy_from_machine(
        &mut self,
        source: &str,
        target_dir: &str,
    ) -> Result<PathBuf, MachineError> {
        self.transfers += 1;
        let inter = format!("xfer-{}", self.transfers);
        let cmd = format!(
            "mkdir -p /tmp/shared/{inter} && cp -r {} /tmp/shared/{inter}/",
            shell::shell_quote(source)
        );
        let out = self.execute(&cmd, None, true).await?;
        if out.status != 0 {
            return Err(MachineError::Failed {
                name: self.name.clone(),
                message: format!(
                    "copy_from_machine: copying {source} failed (exit code {}); does it exist, and is /tmp/shared mounted?",
                    out.status
                ),
            });
        }
        let base = Path::new(source)
            .file_name()
            .map(|b| b.to_string_lossy().to_string())
            .unwrap_or_else(|| "file".into());
        let dest_dir = self.cfg.out_dir.join(target_dir);
        std::fs::create_dir_all(&dest_dir).map_err(self.io_err("creating the target directory"))?;
        let from = self.shared_dir().join(&inter).join(&base);
        let dest = dest_dir.join(&base);
        copy_tree(&from, &dest).map_err(self.io_err("copying out of the shared directory"))?;
        let _ = std::fs::remove_dir_all(self.shared_dir().join(&inter));
        Ok(dest)
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from)?;
        std::os::unix::fs::symlink(target, to)
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}
