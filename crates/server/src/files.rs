//! Files Quota creates hold secrets or money (SPEC §12): the SQLite database (and its `-wal`
//! and `-shm` companions, which SQLite creates with the database file's mode) and the master
//! key file are mode 0600, whatever the umask. Not here: what goes in them.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file a `sqlite:` database URL names (None for PostgreSQL and in-memory databases).
pub fn sqlite_file(database_url: &str) -> Option<PathBuf> {
    let rest = database_url.strip_prefix("sqlite://").or_else(|| database_url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

/// Create `path` (which must not exist) readable and writable by its owner only, with `bytes`.
pub fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Make an existing file owner-only (0600).
pub fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode != 0o600 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Before SQLite opens `db`: create it empty and 0600 if it does not exist (SQLite then gives
/// the WAL and shared-memory files the same mode), else make it and its companions 0600.
pub fn prepare_sqlite_file(db: &Path) -> std::io::Result<()> {
    if !db.exists() {
        if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        return match create_private(db, b"") {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => restrict(db),
            other => other,
        };
    }
    restrict(db)?;
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let companion = Path::new(&name);
        if companion.exists() {
            restrict(companion)?;
        }
    }
    Ok(())
}
