package secret

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/astguard/astguard/internal/fsafe"
)

// File is the Recorder of the secrets file (response.secrets_file): one
// JSON line per record, {"time","extension","secret","status"}, appended
// to a file only the guard's user can read. The file is opened afresh for
// every line, through fsafe: never through a symlink planted at its path
// (which would write the new secret into a file of someone else's
// choosing), and only if it is a regular file of the guard's user with
// mode 0600 (a looser file is refused, not tightened: it may have given
// its secrets away already). A missing file is created 0600, its missing
// directory 0700. Every line is synced before Record returns.
//
// Use one File per path: its lines are written one at a time.
type File struct {
	path string
	mu   sync.Mutex
}

var _ Recorder = (*File)(nil)

// NewFile returns the Recorder of the secrets file at path.
func NewFile(path string) *File { return &File{path: path} }

// Path is the file's path.
func (f *File) Path() string { return f.path }

// FileLine is one line of the secrets file.
type FileLine struct {
	Time      time.Time `json:"time"`
	Extension string    `json:"extension"`
	Secret    string    `json:"secret"`
	// Status is "pending" when written just before the change and
	// "applied" or "failed" once Asterisk answered.
	Status Status `json:"status"`
}

// Record appends l to the file; it returns the file's path, also when it
// fails.
func (f *File) Record(l Line) (string, error) {
	return f.path, f.append(FileLine(l))
}

func (f *File) append(l FileLine) error {
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fh, err := fsafe.OpenPrivate(f.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE)
	if err != nil {
		return err
	}
	if _, err := fh.Write(append(b, '\n')); err != nil {
		fh.Close()
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

// CheckFile refuses, before any rotation, a secrets file every rotation
// would refuse (a symlink, not a regular file, another owner, a mode
// other than 0600): better a guard that does not start than one that
// finds out during an attack that it cannot rotate. A missing file is
// fine: the first rotation creates it.
func CheckFile(path string) error {
	err := fsafe.CheckPrivate(path)
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
