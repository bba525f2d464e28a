package bans

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"

	"github.com/astguard/astguard/internal/fsafe"
)

// The state file is a snapshot; the changes since it are appended to a
// journal next to it (JournalName), one JSON record a line, and synced:
// recording a ban costs a few hundred bytes and one fsync however many bans
// there are, where rewriting the state file costs a second for 100,000
// bans. When the journal has grown past the state file (and at least
// compactAt), the state file is written again (atomically) with
// everything and the journal emptied. A reader (ReadState) applies the
// journal to the snapshot.
//
// Every change of the bans or the incidents is journaled, so replaying the
// whole journal over a newer snapshot (a crash between writing the
// snapshot and emptying the journal) gives that snapshot again: each
// prefix ends as its last record says, which is what the snapshot holds.
//
// A record is {"ban":{...}} (the ban as it is now), {"lift":"PREFIX"} (the
// prefix is no longer banned) or {"incidents":[...]} (the incident book's
// list, replaced). A last line without its newline is a write a crash cut
// short: it is ignored, and its ban was never reported saved.

// JournalName is the journal of the state file at path: path + ".journal".
func JournalName(path string) string { return path + ".journal" }

// compactAt is the smallest journal rewritten into the state file.
const compactAt = 1 << 20

// record is one line of the journal.
type record struct {
	Ban       *Ban            `json:"ban,omitempty"`
	Lift      *netip.Prefix   `json:"lift,omitempty"`
	Incidents json.RawMessage `json:"incidents,omitempty"`
}

// testHookBeforeAppend, when set by a test, runs before records are
// appended to the journal; an error it returns fails the append.
var testHookBeforeAppend atomic.Pointer[func() error]

// readJournal applies the journal at jpath to st. A missing journal
// changes nothing.
func readJournal(jpath string, st *State) error {
	f, err := fsafe.OpenPrivate(jpath, os.O_RDONLY)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bans journal %s cannot be used: %w", jpath, err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("read bans journal %s: %w", jpath, err)
	}
	if len(data) == 0 {
		return nil
	}
	if st.Version != StateVersion {
		return fmt.Errorf("%w: %s: a journal next to a version %d state file", ErrCorrupt, jpath, st.Version)
	}
	if err := replay(data, st); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrCorrupt, jpath, err)
	}
	return nil
}

// replay applies the records of data to st, in order.
func replay(data []byte, st *State) error {
	bans := make(map[netip.Prefix]Ban, len(st.Bans))
	for _, b := range st.Bans {
		bans[b.Prefix] = b
	}
	for n := 1; len(data) > 0; n++ {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break // cut short by a crash: never reported saved
		}
		line := data[:i]
		data = data[i+1:]
		r, ok := decodeRecord(line)
		if !ok {
			if err := strictDecode(line, &r); err != nil {
				return fmt.Errorf("record %d: %w", n, err)
			}
		}
		switch {
		case r.Ban != nil && r.Lift == nil && r.Incidents == nil:
			if err := checkBan(*r.Ban); err != nil {
				return fmt.Errorf("record %d: %w", n, err)
			}
			bans[r.Ban.Prefix] = *r.Ban
		case r.Lift != nil && r.Ban == nil && r.Incidents == nil:
			delete(bans, *r.Lift)
		case r.Incidents != nil && r.Ban == nil && r.Lift == nil:
			if !isArray(r.Incidents) {
				return fmt.Errorf("record %d: incidents is not a list", n)
			}
			st.Incidents = compactJSON(r.Incidents)
		default:
			return fmt.Errorf("record %d: want exactly one of ban, lift, incidents", n)
		}
	}
	st.Bans = slices.Collect(maps.Values(bans))
	sortBans(st.Bans)
	return nil
}

// journal appends records to the journal of a state file and rewrites
// the state file when the journal has grown. Not safe for concurrent use:
// the Manager calls it with its writer's turn.
type journal struct {
	path  string   // the state file
	f     *os.File // the journal, open for appending; nil until the first append
	size  int64    // bytes in the journal
	state int64    // bytes of the state file as last written
}

func newJournal(path string) *journal { return &journal{path: path} }

// sizes reads the sizes of the state file and of the journal as a
// previous run left them, so that a journal grown then is folded in when
// due.
func (j *journal) sizes() {
	if fi, err := os.Lstat(j.path); err == nil {
		j.state = fi.Size()
	}
	if j.f == nil {
		if fi, err := os.Lstat(JournalName(j.path)); err == nil {
			j.size = fi.Size()
		}
	}
}

// open opens (creating) the journal for appending, and on creation syncs
// its directory so that the file itself survives a crash.
func (j *journal) open() error {
	if j.f != nil {
		return nil
	}
	name := JournalName(j.path)
	_, statErr := os.Lstat(name)
	f, err := fsafe.OpenPrivate(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE)
	if err != nil {
		return fmt.Errorf("open bans journal %s: %w", name, err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("open bans journal %s: %w", name, err)
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		if err := fsafe.SyncDir(filepath.Dir(name)); err != nil {
			_ = f.Close()
			return fmt.Errorf("open bans journal %s: %w", name, err)
		}
	}
	j.f, j.size = f, fi.Size()
	return nil
}

// append writes recs to the journal, one line each, and syncs it: when it
// returns nil they survive a crash. A failed write is cut back so that
// no partial record stays before the next one.
func (j *journal) append(recs []record) error {
	if len(recs) == 0 {
		return nil
	}
	if h := testHookBeforeAppend.Load(); h != nil {
		if err := (*h)(); err != nil {
			return fmt.Errorf("append to bans journal %s: %w", JournalName(j.path), err)
		}
	}
	if err := j.open(); err != nil {
		return err
	}
	buf := make([]byte, 0, 256*len(recs))
	for i := range recs {
		buf = appendRecord(buf, &recs[i])
	}
	name := JournalName(j.path)
	if _, err := j.f.Write(buf); err != nil {
		_ = j.f.Truncate(j.size)
		return fmt.Errorf("append to bans journal %s: %w", name, err)
	}
	if err := j.f.Sync(); err != nil {
		_ = j.f.Truncate(j.size)
		return fmt.Errorf("sync bans journal %s: %w", name, err)
	}
	j.size += int64(len(buf))
	return nil
}

// due reports whether the journal has grown enough to be folded into the
// state file.
func (j *journal) due() bool { return j.size >= compactAt && j.size >= j.state }

// snapshot writes the state file with bans and incidents (atomically),
// then empties the journal: the state file holds everything.
func (j *journal) snapshot(bans []Ban, incidents json.RawMessage) error {
	n, err := writeState(j.path, bans, incidents)
	if err != nil {
		return err
	}
	j.state = int64(n)
	return j.truncate()
}

// truncate empties the journal, if there is one.
func (j *journal) truncate() error {
	if j.f == nil {
		name := JournalName(j.path)
		if _, err := os.Lstat(name); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err := j.open(); err != nil {
			return err
		}
	}
	if err := j.f.Truncate(0); err != nil {
		return fmt.Errorf("empty bans journal %s: %w", JournalName(j.path), err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("sync bans journal %s: %w", JournalName(j.path), err)
	}
	j.size = 0
	return nil
}

// close closes the journal file.
func (j *journal) close() {
	if j.f != nil {
		_ = j.f.Close()
		j.f = nil
	}
}
