// Package fsafe opens, creates and checks the guard's private files (the
// bans state, the new SIP secrets, the AMI secret, the configuration)
// without trusting what sits at their paths: a symlink planted there could
// make the guard write a secret into a file of the attacker's choosing or
// change the mode of another file; a file readable by every local user
// gives away the AMI secret or the new SIP secrets.
//
// Private files are regular files, never followed through a symlink, owned
// by the guard's effective user, and open to no one else (mode 0600 or
// stricter). Their directories are created with mode 0700 when missing.
package fsafe

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrUnsafe marks a file or directory the guard refuses to use as it is.
// Errors wrapping it say what is wrong and what to do.
var ErrUnsafe = errors.New("unsafe file")

// unsafeErr builds an error wrapping ErrUnsafe.
func unsafeErr(path, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrUnsafe, path, fmt.Sprintf(format, args...))
}

// owner returns the uid that owns fi.
func owner(fi fs.FileInfo) (uint32, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Uid, true
}

// checkPrivate checks an opened or stat'ed private file: a regular file owned
// by the effective user, with no permission bit for group or others.
func checkPrivate(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return unsafeErr(path, "not a regular file (%s)", typeName(fi.Mode()))
	}
	if uid, ok := owner(fi); ok && int(uid) != os.Geteuid() {
		return unsafeErr(path, "owned by uid %d, not by the guard's user (uid %d): chown it", uid, os.Geteuid())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return unsafeErr(path, "mode %04o lets other users in: chmod 600 it", perm)
	}
	return nil
}

// OpenPrivate opens path with flag (os.O_RDONLY, os.O_WRONLY|os.O_APPEND|
// os.O_CREATE, ...) without following a symlink in its last component. A file
// it creates gets mode 0600, in a directory made by MkdirPrivate when
// missing. The opened file must be a regular file owned by the effective
// user with mode 0600 or stricter: otherwise it is closed and an error
// wrapping ErrUnsafe says why.
func OpenPrivate(path string, flag int) (*os.File, error) {
	if flag&os.O_CREATE != 0 {
		if err := MkdirPrivate(filepath.Dir(path)); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, unsafeErr(path, "is a symlink: the guard does not follow symlinks for its private files")
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil {
		err = checkPrivate(path, fi)
	}
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return f, nil
}

// CheckPrivate checks, without opening it, that path is a regular file (not
// a symlink) owned by the effective user with mode 0600 or stricter.
func CheckPrivate(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return unsafeErr(path, "is a symlink: the guard does not follow symlinks for its private files")
	}
	return checkPrivate(path, fi)
}

// ErrReadableByOthers marks a file CheckNotPublic found fine in every
// other way but readable by every local user. It wraps ErrUnsafe too; a
// caller that has been told to accept shared files (a container mount whose
// mode cannot be changed) may let this one error pass.
var ErrReadableByOthers = fmt.Errorf("%w: readable by every user", ErrUnsafe)

// CheckNotPublic checks a file the guard only reads and that an administrator
// may share with a group (the configuration, the AMI secret file): it must
// be a regular file, owned by root or the effective user, not writable by
// group or others and not readable by others. Symlinks are followed (a
// configuration managed by a tool is often a link), the target is checked.
// Being readable by others is checked last, so an error wrapping
// ErrReadableByOthers means nothing else is wrong.
func CheckNotPublic(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return notPublic(path, fi)
}

func notPublic(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return unsafeErr(path, "not a regular file (%s)", typeName(fi.Mode()))
	}
	if uid, ok := owner(fi); ok && uid != 0 && int(uid) != os.Geteuid() {
		return unsafeErr(path, "owned by uid %d, neither root nor the guard's user (uid %d); run: chown %d %s", uid, os.Geteuid(), os.Geteuid(), path)
	}
	perm := fi.Mode().Perm()
	if perm&0o022 != 0 {
		return unsafeErr(path, "mode %04o: writable by group or others; run: chmod go-w %s", perm, path)
	}
	if perm&0o004 != 0 {
		return fmt.Errorf("%w: %s: mode %04o; run: chmod o-r %s (0600, or 0640 to share it with a group)", ErrReadableByOthers, path, perm, path)
	}
	return nil
}

// OpenNoFollow opens path read-only, refusing a symlink in its last
// component and anything but a regular file (a FIFO or a device is not
// waited on: it is opened non-blocking and refused). The caller checks
// ownership and mode as it needs.
func OpenNoFollow(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, unsafeErr(path, "is a symlink: name the file itself")
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = unsafeErr(path, "not a regular file (%s)", typeName(fi.Mode()))
	}
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return f, nil
}

// CheckSocket checks the unix socket a client is about to talk to: it must
// be a socket itself (not a symlink, not a regular file), owned by root or
// the effective user, and not writable by others (0600 or 0660): anything
// else may be a stand-in planted by another user to collect what the client
// sends or to feed it false answers.
func CheckSocket(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, _ := os.Readlink(path)
		return unsafeErr(path, "is a symlink to %q, not the guard's socket", target)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return unsafeErr(path, "not a socket (%s)", typeName(fi.Mode()))
	}
	if uid, ok := owner(fi); ok && uid != 0 && int(uid) != os.Geteuid() {
		return unsafeErr(path, "owned by uid %d, neither root nor you (uid %d): not the guard's socket", uid, os.Geteuid())
	}
	if perm := fi.Mode().Perm(); perm&0o002 != 0 {
		return unsafeErr(path, "mode %04o: any user can connect or stand in for the guard (the guard makes it 0600)", perm)
	}
	return nil
}

// typeName names a file mode's type for an error message.
func typeName(m fs.FileMode) string {
	switch t := m.Type(); {
	case m.IsRegular():
		return "a regular file"
	case t&fs.ModeDir != 0:
		return "a directory"
	case t&fs.ModeSymlink != 0:
		return "a symlink"
	case t&fs.ModeSocket != 0:
		return "a socket"
	case t&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case t&fs.ModeDevice != 0:
		return "a device"
	default:
		return t.String()
	}
}

// MkdirPrivate makes dir with mode 0700 when it is missing (its missing
// parents too, with mode 0755 as usual for /var/lib-like trees). An existing
// dir must be a directory and not a symlink; its mode is left as it is (a
// shared parent such as /tmp is fine: the files in it are checked).
func MkdirPrivate(dir string) error {
	fi, err := os.Lstat(dir)
	switch {
	case err == nil:
		if fi.Mode()&fs.ModeSymlink != 0 {
			// A link to a directory the administrator made is common
			// (/var/lib/astguard -> /srv/...): follow it, but it must
			// end at a directory.
			if fi, err = os.Stat(dir); err != nil {
				return err
			}
		}
		if !fi.IsDir() {
			return unsafeErr(dir, "not a directory")
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	// The umask may have taken bits away, never added: still, set it.
	return os.Chmod(dir, 0o700)
}

// WriteFileAtomic replaces path with data, atomically and privately: a
// temporary file (mode 0600, created exclusively, so never through a
// symlink) in the same directory is written, synced and renamed over path,
// then the directory is synced; a reader sees the old or the new complete
// file. An existing path must be a regular file, not a symlink (the rename
// would replace the link, but a symlink there means someone meddled: say so).
// beforeRename, if not nil, runs between the sync and the rename (tests use
// it to simulate a crash).
func WriteFileAtomic(path string, data []byte, beforeRename func(tmp string) error) (err error) {
	dir := filepath.Dir(path)
	if err := MkdirPrivate(dir); err != nil {
		return err
	}
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return unsafeErr(path, "not a regular file (%s): move it away", fi.Mode().Type())
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if beforeRename != nil {
		if err = beforeRename(tmp); err != nil {
			return err
		}
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// SyncDir flushes a directory's entries (a rename or a new file) to disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}
