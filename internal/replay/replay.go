// Package replay runs the detector over recorded AMI transcripts as fast as
// it can, with time taken from the recording: an hour of traffic replays in
// milliseconds and gives the same alerts every run.
package replay

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

// Result sums up one replayed transcript.
type Result struct {
	Messages  int // messages after the banner
	Events    int // messages decoded into events the detector uses
	Malformed int // messages rejected by the reader (malformed or oversized)
	Alerts    int
	Detector  detector.Stats
}

// Reader replays one transcript from r, with fresh detector state, calling
// emit for every alert in stream order. A recording that a restarted guard
// appended to holds one AMI session after each ami.RecordingStart marker:
// there the calls seen live are forgotten and alert positions (Seq) count
// from the marker, as in the restarted guard's own alerts.
func Reader(r io.Reader, cfg detector.Config, emit func(*detector.Alert)) (Result, error) {
	var res Result
	tr := ami.NewTranscript(bufio.NewReaderSize(r, 64<<10))
	if _, err := tr.Banner(); err != nil {
		return res, err
	}
	det := detector.New(cfg)
	var (
		msg    ami.Message
		ev     ami.Event
		alerts []detector.Alert
		base   int // seq of the last ami.RecordingStart marker
	)
	for {
		seq, t, err := tr.Next(&msg)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			if errors.Is(err, ami.ErrMalformed) || errors.Is(err, ami.ErrOversized) {
				res.Messages++
				res.Malformed++
				continue
			}
			return res, err
		}
		res.Messages++
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
					emit(&alerts[i])
				}
			}
			continue
		}
		res.Events++
		ev.Time, ev.Seq = t, seq-base
		alerts = det.Process(&ev, alerts[:0])
		for i := range alerts {
			res.Alerts++
			emit(&alerts[i])
		}
	}
	res.Detector = det.Stats()
	return res, nil
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
