//! Taking over the terminal and always giving it back: raw mode, the alternate screen, a hidden
//! cursor, and stderr set aside (lines written to it while the dashboard owns the screen would
//! be lost or smear the frame; they are replayed once the terminal is restored).
//!
//! `restore` is idempotent and safe from any thread: the guard calls it on drop, the panic hook
//! before the panic message, and the signal path before a forced exit.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, Once};

use ratatui::crossterm::{cursor, execute, terminal};

/// What `restore` must undo. `Some` while the dashboard owns the terminal.
static TAKEN: Mutex<Option<Taken>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

struct Taken {
    stderr: Option<StderrCapture>,
}

/// Owns the terminal while alive; restores it on drop.
pub struct TerminalGuard(());

impl TerminalGuard {
    /// Enters raw mode and the alternate screen, sets stderr aside and installs the panic hook.
    pub fn take() -> io::Result<TerminalGuard> {
        install_panic_hook();
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        if taken.is_some() {
            return Err(io::Error::other("the terminal is already taken"));
        }
        terminal::enable_raw_mode()?;
        if let Err(e) = execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide) {
            let _ = terminal::disable_raw_mode();
            return Err(e);
        }
        *taken = Some(Taken {
            stderr: StderrCapture::start().ok(),
        });
        Ok(TerminalGuard(()))
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Whether the dashboard still owns the terminal (a panic elsewhere may have restored it).
pub fn is_taken() -> bool {
    TAKEN.lock().map_or(true, |t| t.is_some())
}

/// Gives the terminal back: cursor, main screen, cooked mode, stderr (with what it received in
/// the meantime). Does nothing if the terminal is not taken.
pub fn restore() {
    let taken = match TAKEN.try_lock() {
        Ok(mut guard) => guard.take(),
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().take(),
        // Another thread is restoring right now.
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    let Some(taken) = taken else {
        return;
    };
    let _ = execute!(io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
    if let Some(capture) = taken.stderr {
        capture.finish();
    }
}

fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// stderr pointed at an anonymous in-memory file; the real stderr kept aside.
struct StderrCapture {
    saved: OwnedFd,
    file: File,
}

impl StderrCapture {
    fn start() -> io::Result<StderrCapture> {
        // SAFETY: plain syscalls on descriptors this function owns; every result is checked.
        let memfd = unsafe { libc::memfd_create(c"stampede-stderr".as_ptr(), libc::MFD_CLOEXEC) };
        if memfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `memfd` was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(memfd) };
        // SAFETY: duplicates fd 2 to a new descriptor that nothing else owns.
        let saved = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
        if saved < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `saved` is a fresh descriptor owned by nobody else.
        let saved = unsafe { OwnedFd::from_raw_fd(saved) };
        let _ = io::stderr().flush();
        // SAFETY: points fd 2 at the memfd; both descriptors are valid.
        if unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(StderrCapture { saved, file })
    }

    /// Points fd 2 back at the real stderr and writes out what was captured.
    fn finish(mut self) {
        let _ = io::stderr().flush();
        // SAFETY: both descriptors are valid; this restores the original fd 2.
        if unsafe { libc::dup2(self.saved.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
            return;
        }
        let mut captured = Vec::new();
        if self.file.seek(SeekFrom::Start(0)).is_ok()
            && self.file.read_to_end(&mut captured).is_ok()
            && !captured.is_empty()
        {
            let mut stderr = io::stderr();
            let _ = stderr.write_all(&captured);
            let _ = stderr.flush();
        }
    }
}
