package guard

import (
	"bufio"
	"fmt"
	"os"
	"time"
)

// recorder writes what the guard receives in the transcript format of the
// fixtures (banner line, messages, each with TimeReceived last), so a day of
// a real PBX can be replayed with `guard replay` to tune thresholds. The file
// is rotated by size: FILE, then FILE.1 ... FILE.<keep>.
//
// Each message is written as its bytes arrived (ami.Message.Raw: headers in
// order, repeated keys kept), replies included, before any filtering.
type recorder struct {
	path     string
	maxBytes int64
	keep     int
	banner   func() string

	f    *os.File
	w    *bufio.Writer
	size int64
}

// newRecorder checks the file can be written; it is opened for good at the
// first message, when the session's banner is known.
func newRecorder(path string, maxBytes int64, keep int, banner func() string) (*recorder, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	f.Close()
	return &recorder{path: path, maxBytes: maxBytes, keep: keep, banner: banner}, nil
}

func (r *recorder) open() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	r.f, r.w, r.size = f, bufio.NewWriterSize(f, 256<<10), 0
	b := r.banner()
	if b == "" {
		b = "Asterisk Call Manager/unknown"
	}
	n, err := fmt.Fprintf(r.w, "%s\r\n", b)
	r.size += int64(n)
	return err
}

// write appends one message: raw is the message's header lines and closing
// empty line, as ami.Message.Raw returns it.
func (r *recorder) write(raw []byte, at time.Time) error {
	if len(raw) < 2 {
		return nil
	}
	switch {
	case r.f == nil:
		if err := r.open(); err != nil {
			return err
		}
	case r.maxBytes > 0 && r.size >= r.maxBytes:
		// Rotate before writing, so no file is ever left with a banner only.
		if err := r.rotate(); err != nil {
			return err
		}
	}
	body := raw[:len(raw)-2] // without the closing empty line
	n1, err := r.w.Write(body)
	if err != nil {
		return err
	}
	n2, err := fmt.Fprintf(r.w, "TimeReceived: %s\r\n\r\n", at.UTC().Format("2006-01-02T15:04:05.000000Z"))
	if err != nil {
		return err
	}
	r.size += int64(n1 + n2)
	return nil
}

func (r *recorder) rotate() error {
	if err := r.close(); err != nil {
		return err
	}
	for i := r.keep; i >= 1; i-- {
		from := r.path
		if i > 1 {
			from = fmt.Sprintf("%s.%d", r.path, i-1)
		}
		if _, err := os.Stat(from); err == nil {
			if err := os.Rename(from, fmt.Sprintf("%s.%d", r.path, i)); err != nil {
				return err
			}
		}
	}
	return r.open()
}

func (r *recorder) flush() error {
	if r.w == nil {
		return nil
	}
	return r.w.Flush()
}

func (r *recorder) close() error {
	if r.f == nil {
		return nil
	}
	err := r.w.Flush()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	r.f, r.w = nil, nil
	return err
}
