package guard

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

// secretsFile appends one JSON line per rotation to a file only the guard's
// user can read. It is opened afresh for every line, through fsafe: never
// through a symlink planted at its path (which would write the new secret
// into a file of someone else's choosing), and only if it is a regular file
// of the guard's user with mode 0600; its directory is made 0700 when
// missing.
type secretsFile struct {
	mu   sync.Mutex
	path string
}

type secretLine struct {
	Time      time.Time `json:"time"`
	Extension string    `json:"extension"`
	Secret    string    `json:"secret"`
	// Status is "pending" when written just before the UpdateConfig and
	// "applied" or "failed" once Asterisk answered.
	Status string `json:"status"`
}

// checkSecretsFile refuses, at start, a secrets file every rotation would
// refuse: better a guard that does not start than one that finds out during
// an attack that it cannot rotate. A missing file is fine: the first
// rotation creates it.
func checkSecretsFile(path string) error {
	err := fsafe.CheckPrivate(path)
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("response.secrets_file: %w", err)
}

func (f *secretsFile) write(l secretLine) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fh, err := fsafe.OpenPrivate(f.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE)
	if err != nil {
		return err
	}
	b, err := json.Marshal(l)
	if err != nil {
		fh.Close()
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
