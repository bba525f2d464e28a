// Package replay runs the detector over recorded AMI transcripts as fast as
// it can, with time taken from the recording: an hour of traffic replays in
// milliseconds and gives the same alerts every run.
package replay

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

// Result sums up one replayed transcript.
type Result struct {
	Messages int // messages after the banner: read, skipped and rejected
	// Skipped counts the messages of events the detector does not use
	// (ami.UsedEvent), passed over unread.
	Skipped   int
	Events    int // messages decoded into events the detector uses
	Malformed int // messages rejected by the reader: malformed or oversized
	Oversized int // of Malformed, those longer than the reader's cap
	Alerts    int
	// ReadTwice says the transcript was read again in full: a message
	// without a time of its own followed skipped messages, which may have
	// carried its time (see ami.ErrSkippedTime).
	ReadTwice bool
	Detector  detector.Stats
}

// skipUnused is the reader's Skip: every event the detector does not use,
// but for the marker a restarted recorder writes.
func skipUnused(name []byte) bool {
	return !ami.UsedEvent(name) && string(name) != ami.RecordingStart
}

// readers keep the transcript readers (and their 256 KiB buffers) of finished
// replays for the next ones: [0] reads in full, [1] skips unused events.
var readers = [2]sync.Pool{
	{New: func() any { return ami.NewTranscriptOptions(nil, ami.ReaderOptions{}) }},
	{New: func() any { return ami.NewTranscriptOptions(nil, ami.ReaderOptions{Skip: skipUnused}) }},
}

// Reader replays one transcript from r, with fresh detector state, calling
// emit for every alert in stream order. A recording that a restarted guard
// appended to holds one AMI session after each ami.RecordingStart marker:
// there the calls seen live are forgotten and alert positions (Seq) count
// from the marker, as in the restarted guard's own alerts.
//
// The messages of events the detector does not use are skipped unread when r
// can seek: if a later message then needs the time of a skipped one, the
// transcript is read again from where it started, in full, and only the
// alerts not yet emitted are emitted. A reader that cannot seek is read in
// full.
func Reader(r io.Reader, cfg detector.Config, emit func(*detector.Alert)) (Result, error) {
	seeker, ok := r.(io.Seeker)
	var start int64
	if ok {
		var err error
		if start, err = seeker.Seek(0, io.SeekCurrent); err != nil {
			ok = false
		}
	}
	if !ok {
		return read(r, cfg, false, 0, emit)
	}
	res, err := read(r, cfg, true, 0, emit)
	var lost *lostTime
	if !errors.As(err, &lost) {
		return res, err
	}
	if _, err := seeker.Seek(start, io.SeekStart); err != nil {
		return res, fmt.Errorf("cannot read the transcript again in full: %w", err)
	}
	res, err = read(r, cfg, false, lost.emitted, emit)
	res.ReadTwice = true
	return res, err
}

// lostTime stops a skipping read at a message whose time may have been in
// a skipped one; emitted is the seq of the last message read before it.
type lostTime struct{ emitted int }

func (*lostTime) Error() string { return "a message needs the time of a skipped one" }

// read replays the transcript from r. It emits the alerts of the messages
// after position emitted (those before were emitted by an earlier read).
// With skip it returns a *lostTime where the Transcript says
// ami.ErrSkippedTime.
func read(r io.Reader, cfg detector.Config, skip bool, emitted int, emit func(*detector.Alert)) (Result, error) {
	var res Result
	pool := &readers[0]
	if skip {
		pool = &readers[1]
	}
	tr := pool.Get().(*ami.Transcript)
	tr.Reset(r)
	defer func() {
		tr.Reset(nil)
		pool.Put(tr)
	}()
	if _, err := tr.Banner(); err != nil {
		return res, err
	}
	det := detector.New(cfg)
	var (
		msg     ami.Message
		ev      ami.Event
		alerts  []detector.Alert
		lastSeq int
		base    int // seq of the last ami.RecordingStart marker
	)
	for {
		seq, t, err := tr.Next(&msg)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			if errors.Is(err, ami.ErrSkippedTime) {
				return res, &lostTime{emitted: lastSeq}
			}
			if errors.Is(err, ami.ErrMalformed) || errors.Is(err, ami.ErrOversized) {
				continue
			}
			res.count(tr.Stats())
			return res, err
		}
		lastSeq = seq
		if !ami.Decode(&msg, &ev) {
			if string(msg.GetBytes("Event")) == ami.RecordingStart {
				// A restarted guard's new AMI session: the calls seen
				// live before are forgotten, as a reconnect forgets those
				// Asterisk no longer lists (the windows are kept), and
				// positions count from here, as the new guard counted.
				base = seq
				alerts = det.Resync(t, nil, alerts[:0])
				for i := range alerts {
					res.Alerts++
					if seq > emitted {
						emit(&alerts[i])
					}
				}
			}
			continue
		}
		res.Events++
		ev.Time, ev.Seq = t, seq-base
		alerts = det.Process(&ev, alerts[:0])
		for i := range alerts {
			res.Alerts++
			if seq > emitted { // (alert Seq counts from the last marker; seq from the start)
				emit(&alerts[i])
			}
		}
	}
	res.count(tr.Stats())
	res.Detector = det.Stats()
	return res, nil
}

// count takes the message counts from the reader's.
func (res *Result) count(st ami.ReaderStats) {
	res.Messages = int(st.Messages + st.Malformed + st.Oversized + st.Skipped)
	res.Skipped = int(st.Skipped)
	res.Malformed = int(st.Malformed + st.Oversized)
	res.Oversized = int(st.Oversized)
}

// File replays the transcript at path.
func File(path string, cfg detector.Config, emit func(*detector.Alert)) (Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return Result{}, err
	}
	defer f.Close()
	res, err := Reader(f, cfg, emit)
	if err != nil {
		return res, fmt.Errorf("%s: %w", path, err)
	}
	return res, nil
}

// FileResult is what File gave for one transcript of Files.
type FileResult struct {
	Path   string
	Result Result
	Alerts []detector.Alert // in stream order
	Err    error
}

// Files replays each transcript at paths with fresh state, up to parallel
// at a time (at least one), and calls done with each result in the order of
// paths, from the calling goroutine. When done returns false, Files starts
// no other transcript and returns once those under way have ended.
func Files(paths []string, cfg detector.Config, parallel int, done func(*FileResult) bool) {
	results := make([]chan *FileResult, len(paths))
	for i := range results {
		results[i] = make(chan *FileResult, 1)
	}
	var (
		next    atomic.Int64
		stopped atomic.Bool
		wg      sync.WaitGroup
	)
	for range min(max(parallel, 1), len(paths)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(paths) || stopped.Load() {
					return
				}
				fr := &FileResult{Path: paths[i]}
				fr.Result, fr.Err = File(paths[i], cfg, func(a *detector.Alert) {
					fr.Alerts = append(fr.Alerts, *a)
				})
				results[i] <- fr
			}
		})
	}
	for _, ch := range results {
		if !done(<-ch) {
			stopped.Store(true)
			break
		}
	}
	wg.Wait()
}
