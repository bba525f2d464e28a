package bans

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
)

// stateVersion is the format of the state file.
const stateVersion = 1

// stateFile is the JSON document on disk.
type stateFile struct {
	Version int   `json:"version"`
	Bans    []Ban `json:"bans"`
}

// testHookBeforeRename, when set by a test, runs after the temporary file
// is written and synced and before it replaces the state file.
var testHookBeforeRename atomic.Pointer[func(tmp string) error]

// ReadState reads the bans in the state file at path. A missing file holds
// no bans. A file that cannot be parsed is an error naming it; ReadState
// never changes the file.
func ReadState(path string) ([]Ban, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read bans state file %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var st stateFile
	if err := dec.Decode(&st); err != nil {
		return nil, corrupt(path, err)
	}
	if dec.More() {
		return nil, corrupt(path, errors.New("data after the JSON document"))
	}
	if st.Version != stateVersion {
		return nil, corrupt(path, fmt.Errorf("version %d, want %d", st.Version, stateVersion))
	}
	for i, b := range st.Bans {
		if !b.Addr.IsValid() {
			return nil, corrupt(path, fmt.Errorf("ban %d has no valid addr", i))
		}
	}
	return st.Bans, nil
}

func corrupt(path string, err error) error {
	return fmt.Errorf("bans state file %s is corrupt (left untouched: fix or move it away): %w", path, err)
}

// writeState replaces the state file at path with bans, atomically: a temp
// file in the same directory is written, synced and renamed over path, then
// the directory is synced. A reader sees the old or the new complete file.
// The file has mode 0600.
func writeState(path string, bans []Ban) (err error) {
	if bans == nil {
		bans = []Ban{}
	}
	data, err := json.MarshalIndent(stateFile{Version: stateVersion, Bans: bans}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode bans state: %w", err)
	}
	data = append(data, '\n')

	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write bans state file %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
			err = fmt.Errorf("write bans state file %s: %w", path, err)
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
	if hook := testHookBeforeRename.Load(); hook != nil {
		if err = (*hook)(tmp); err != nil {
			return err
		}
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
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

// ErrLocked means another process holds the state file's lock: the guard
// daemon is running (use its admin endpoint), or another offline command.
var ErrLocked = errors.New("bans state file is in use by another process (is the guard running?)")

// stateLock is an advisory lock (flock) on path+".lock". The daemon holds it
// from Start to Close; offline commands take it for their edit. The kernel
// drops it when the process dies, so a killed daemon leaves no stale lock.
type stateLock struct{ f *os.File }

func lockState(path string) (*stateLock, error) {
	name := path + ".lock"
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", name, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, name)
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return &stateLock{f: f}, nil
}

func (l *stateLock) release() {
	if l == nil || l.f == nil {
		return
	}
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	_ = l.f.Close()
	l.f = nil
}

// sortBans orders by Since, then address.
func sortBans(bs []Ban) {
	slices.SortFunc(bs, func(a, b Ban) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		return a.Addr.Compare(b.Addr)
	})
}
