package guard

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// secretsFile appends one JSON line per rotation to a file only root can read.
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

func (f *secretsFile) write(l secretLine) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(f.path), 0o700); err != nil {
		return err
	}
	fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	// A file created earlier with looser permissions is tightened.
	if err := fh.Chmod(0o600); err != nil {
		fh.Close()
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
