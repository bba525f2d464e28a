package bans

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/fsafe"
)

// StateVersion is the format of the state file this guard writes. Version
// 1 (read and migrated, never written) held one address per ban and did
// not say whether the ban was real or a dry run.
const StateVersion = 2

// State is the state file's JSON document.
type State struct {
	Version int   `json:"version"`
	Bans    []Ban `json:"bans"`
	// Incidents is kept for the guard's incident book (package incident),
	// which owns its content: this package only checks that it is a JSON
	// array and stores it as it is. Absent when the book has never saved;
	// version 1 has none.
	Incidents json.RawMessage `json:"incidents,omitempty"`
}

// ErrCorrupt marks a state file whose content cannot be used: not JSON, an
// unknown version, a value of the wrong type, an unknown field, a ban
// without a valid prefix. Start moves such a file aside and goes on without
// its bans; ReadState and UnbanOffline only report it.
var ErrCorrupt = errors.New("bans state file is corrupt")

// banV1 is a ban in a version 1 state file.
type banV1 struct {
	Addr      netip.Addr `json:"addr"`
	Since     time.Time  `json:"since"`
	Until     time.Time  `json:"until"` // zero = permanent
	Reason    string     `json:"reason"`
	Extension string     `json:"extension,omitempty"`
}

// testHookBeforeRename, when set by a test, runs after the temporary file
// is written and synced and before it replaces the state file.
var testHookBeforeRename atomic.Pointer[func(tmp string) error]

// ReadState reads the state file at path and applies its journal
// (JournalName); it never changes either. A missing file holds no bans. The file must be a regular file (a symlink is
// not followed) owned by the guard's user with mode 0600: otherwise the
// error wraps fsafe.ErrUnsafe. Content that cannot be used is an error
// wrapping ErrCorrupt.
//
// A version 1 file comes back with Version 1 and every ban marked DryRun:
// version 1 did not record whether a ban was real. Upgrade decides. A
// version 1 file has no journal (a guard that journals has rewritten it as
// version 2 first): one next to it makes the state corrupt.
func ReadState(path string) (State, error) {
	st, err := readSnapshot(path)
	if err != nil {
		return State{}, err
	}
	if err := readJournal(JournalName(path), &st); err != nil {
		return State{}, err
	}
	return st, nil
}

// readSnapshot reads the state file alone.
func readSnapshot(path string) (State, error) {
	f, err := fsafe.OpenPrivate(path, os.O_RDONLY)
	if errors.Is(err, fs.ErrNotExist) {
		return State{Version: StateVersion}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("bans state file %s cannot be used: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return State{}, fmt.Errorf("read bans state file %s: %w", path, err)
	}
	st, err := decodeState(data)
	if err != nil {
		return State{}, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	return st, nil
}

// decodeState parses a state document of version 1 or 2, strictly: an
// unknown field or trailing data is an error.
func decodeState(data []byte) (State, error) {
	var doc struct {
		Version   int             `json:"version"`
		Bans      json.RawMessage `json:"bans"`
		Incidents json.RawMessage `json:"incidents"`
	}
	if err := strictDecode(data, &doc); err != nil {
		return State{}, err
	}
	if len(doc.Bans) == 0 || string(doc.Bans) == "null" {
		return State{}, errors.New("no bans list")
	}
	switch doc.Version {
	case 1:
		if doc.Incidents != nil && string(doc.Incidents) != "null" {
			return State{}, errors.New("version 1 has no incidents")
		}
		var v1 []banV1
		if err := strictDecode(doc.Bans, &v1); err != nil {
			return State{}, err
		}
		st := State{Version: 1, Bans: make([]Ban, 0, len(v1))}
		for i, b := range v1 {
			if !b.Addr.IsValid() {
				return State{}, fmt.Errorf("ban %d has no valid addr", i)
			}
			st.Bans = append(st.Bans, Ban{
				Prefix: netip.PrefixFrom(b.Addr, b.Addr.BitLen()), Since: b.Since, Until: b.Until,
				Reason: b.Reason, Extension: b.Extension, DryRun: true, Origin: OriginAstguard,
			})
		}
		return st, nil
	case StateVersion:
		st := State{Version: StateVersion}
		if bs, err := decodeBans(doc.Bans); err == nil {
			st.Bans = bs
		} else if err := strictDecode(doc.Bans, &st.Bans); err != nil {
			return State{}, err
		}
		if doc.Incidents != nil && string(doc.Incidents) != "null" {
			if !isArray(doc.Incidents) {
				return State{}, errors.New("incidents is not a list")
			}
			st.Incidents = compactJSON(doc.Incidents)
		}
		for i, b := range st.Bans {
			if err := checkBan(b); err != nil {
				return State{}, fmt.Errorf("ban %d: %w", i, err)
			}
		}
		return st, nil
	}
	return State{}, fmt.Errorf("version %d, want 1 or %d", doc.Version, StateVersion)
}

// checkBan checks what every ban of a version 2 file must have.
func checkBan(b Ban) error {
	switch {
	case !b.Prefix.IsValid():
		return errors.New("no valid prefix")
	case b.Prefix != b.Prefix.Masked():
		return fmt.Errorf("prefix %s has bits set after its length", b.Prefix)
	case b.Since.IsZero():
		return fmt.Errorf("%s has no since", b.Prefix)
	case b.Origin == "":
		return fmt.Errorf("%s has no origin", b.Prefix)
	}
	return nil
}

// isArray reports whether raw, valid JSON, is an array.
func isArray(raw json.RawMessage) bool {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	return len(raw) > 0 && raw[0] == '['
}

// compactJSON returns raw, valid JSON, without insignificant space, in a
// slice of its own.
func compactJSON(raw json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return slices.Clone(raw) // not reached: raw was decoded
	}
	return b.Bytes()
}

func strictDecode(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the JSON document")
	}
	return nil
}

// Upgrade turns a version 1 state into the current version; other versions
// are left as they are. Version 1 did not record whether a ban was real, and
// a trial with a dry-run firewall wrote the same bans as a real guard. A
// ban counts as real only when fw is real and the guard's chain holds a DROP
// rule for its address (fw.Rules, read without changing anything): a rule
// there is proof that a real firewall applied it. Every other ban is kept,
// as a dry-run ban: listed, expiring on time, never applied. Dropping
// traffic because of a trial's ban, perhaps a false alarm the trial was
// run to find, is worse than this cost: a real ban whose rule was lost
// before the upgrade (a reboot) is not re-applied, and the detector bans
// the address again at its next attempt.
//
// It returns how many bans were found real and how many kept as dry-run.
// When the chain cannot be read the state is left as it was and the error
// says so.
func (s *State) Upgrade(ctx context.Context, fw firewall.Firewall) (real, dry int, err error) {
	if s.Version != 1 {
		return 0, 0, nil
	}
	var inChain []netip.Prefix
	if fw.Real() {
		if inChain, err = fw.Rules(ctx); err != nil {
			return 0, 0, fmt.Errorf("cannot tell which bans of the version 1 state file were applied, reading the firewall's chain failed: %w", err)
		}
	}
	for i := range s.Bans {
		b := &s.Bans[i]
		b.DryRun = !slices.Contains(inChain, single(b.Prefix.Addr().Unmap()))
		if b.DryRun {
			dry++
		} else {
			real++
		}
	}
	s.Version = StateVersion
	return real, dry, nil
}

// writeState replaces the state file at path with bans and incidents (nil:
// none), atomically and privately (fsafe.WriteFileAtomic: a reader sees
// the old or the new complete file, mode 0600, never written through a
// symlink), and returns its size. Each ban is on a line of its own: the
// file stays readable and greppable, and costs half the time of indented
// JSON at 100,000 bans.
func writeState(path string, bans []Ban, incidents json.RawMessage) (int, error) {
	buf := make([]byte, 0, len(bans)*256+len(incidents)+64)
	buf = fmt.Appendf(buf, "{\n\"version\": %d,\n\"bans\": [", StateVersion)
	for i := range bans {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, '\n')
		buf = appendBan(buf, &bans[i])
	}
	buf = append(buf, "\n]"...)
	if len(incidents) > 0 {
		buf = append(buf, ",\n\"incidents\": "...)
		buf = append(buf, incidents...)
	}
	buf = append(buf, "\n}\n"...)
	var hook func(string) error
	if h := testHookBeforeRename.Load(); h != nil {
		hook = *h
	}
	if err := fsafe.WriteFileAtomic(path, buf, hook); err != nil {
		return 0, fmt.Errorf("write bans state file %s: %w", path, err)
	}
	return len(buf), nil
}

// corruptName is where a corrupt state file at path is moved at now:
// path.corrupt-20261130T015100Z.
func corruptName(path string, now time.Time) string {
	return path + ".corrupt-" + now.UTC().Format("20060102T150405Z")
}

// moveAside renames the corrupt state file at path to corruptName (with a
// counter when that name is taken), keeping it for a person to look at,
// and its journal (if any) to the same name with ".journal" added; it
// returns the new name of the state file. A missing state file with a
// journal is no error: the journal alone held the state.
func moveAside(path string, now time.Time) (string, error) {
	base := corruptName(path, now)
	dst := base
	for i := 1; ; i++ {
		_, err1 := os.Lstat(dst)
		_, err2 := os.Lstat(JournalName(dst))
		if errors.Is(err1, fs.ErrNotExist) && errors.Is(err2, fs.ErrNotExist) {
			break
		}
		dst = fmt.Sprintf("%s.%d", base, i)
	}
	moved := false
	if err := os.Rename(JournalName(path), JournalName(dst)); err == nil {
		moved = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if err := os.Rename(path, dst); err != nil {
		if !moved || !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		dst = JournalName(dst)
	}
	return dst, fsafe.SyncDir(filepath.Dir(path))
}

// ErrLocked means another process holds the state file's lock: the guard
// daemon is running (use its admin endpoint), or another offline command.
var ErrLocked = errors.New("bans state file is in use by another process (is the guard running?)")

// stateLock is an advisory lock (flock) on path+".lock". The daemon holds it
// from Start to Close; offline commands take it for their edit. The kernel
// drops it when the process dies, so a killed daemon leaves no stale lock.
type stateLock struct{ f *os.File }

// lockState takes the lock. The lock file is private like the state file
// (created 0600 in a directory created 0700, never opened through a
// symlink).
func lockState(path string) (*stateLock, error) {
	name := path + ".lock"
	f, err := fsafe.OpenPrivate(name, os.O_RDWR|os.O_CREATE)
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

// sortBans orders by Since, then prefix.
func sortBans(bs []Ban) {
	slices.SortFunc(bs, func(a, b Ban) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
}
