package amitest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/astguard/astguard/internal/ami"
)

// Event classes (manager.h EVENT_FLAG_*), by the names Asterisk prints in
// Privilege and accepts in Events / EventMask.
const (
	classSystem   uint32 = 1 << 0
	classCall     uint32 = 1 << 1
	classSecurity uint32 = 1 << 17
	allClasses    uint32 = 1<<19 - 1
)

var classNames = map[string]uint32{
	"system": 1 << 0, "call": 1 << 1, "log": 1 << 2, "verbose": 1 << 3, "command": 1 << 4,
	"agent": 1 << 5, "user": 1 << 6, "config": 1 << 7, "dtmf": 1 << 8, "reporting": 1 << 9,
	"cdr": 1 << 10, "dialplan": 1 << 11, "originate": 1 << 12, "agi": 1 << 13, "cc": 1 << 14,
	"aoc": 1 << 15, "test": 1 << 16, "security": 1 << 17, "message": 1 << 18,
	"all": allClasses,
}

// eventMask parses an Events / EventMask value as Asterisk's
// strings_to_mask: empty = all, a number = that mask, a false word (off, no,
// false, 0) = none, a true word (on, yes, true) = all, else a comma list of
// class names (unknown names count for nothing).
func eventMask(v string) uint32 {
	v = strings.TrimSpace(v)
	if v == "" {
		return allClasses
	}
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return uint32(n) & allClasses
	}
	switch strings.ToLower(v) {
	case "off", "no", "false", "n", "f":
		return 0
	case "on", "yes", "true", "y", "t":
		return allClasses
	}
	return parseClasses(v)
}

// parseClasses ORs the classes named in a comma list.
func parseClasses(v string) uint32 {
	var m uint32
	for _, p := range strings.Split(v, ",") {
		m |= classNames[strings.ToLower(strings.TrimSpace(p))]
	}
	return m
}

// privilegeClasses returns the classes of a Privilege value without the
// trailing "all" (every event carries it).
func privilegeClasses(v string) uint32 {
	var m uint32
	for _, p := range strings.Split(v, ",") {
		p = strings.ToLower(strings.TrimSpace(p))
		if p != "all" {
			m |= classNames[p]
		}
	}
	return m
}

// scriptMsg is one message to stream.
type scriptMsg struct {
	seq     int
	at      time.Time // recorded time (zero for injected frames)
	raw     []byte    // bytes to send: as recorded, without TimeReceived
	hdrs    [][2]string
	event   string // Event value, lower case
	classes uint32
}

// get returns the value of the first header named k (ASCII case ignored).
func (m *scriptMsg) get(k string) string {
	for _, h := range m.hdrs {
		if strings.EqualFold(h[0], k) {
			return h[1]
		}
	}
	return ""
}

// has reports whether the message has a header named k (ASCII case ignored).
func (m *scriptMsg) has(k string) bool {
	for _, h := range m.hdrs {
		if strings.EqualFold(h[0], k) {
			return true
		}
	}
	return false
}

func newScriptMsg(m *ami.Message, seq int, at time.Time) scriptMsg {
	sm := scriptMsg{seq: seq, at: at}
	sm.hdrs = make([][2]string, 0, m.Len())
	for i := 0; i < m.Len(); i++ {
		k := string(m.Key(i))
		if strings.EqualFold(k, "TimeReceived") {
			continue
		}
		sm.hdrs = append(sm.hdrs, [2]string{k, string(m.Value(i))})
	}
	sm.raw = stripTimeReceived(m.Raw())
	sm.event = strings.ToLower(sm.get("Event"))
	sm.classes = privilegeClasses(sm.get("Privilege"))
	return sm
}

// stripTimeReceived drops the recorder's TimeReceived lines from a frame.
func stripTimeReceived(raw []byte) []byte {
	out := make([]byte, 0, len(raw))
	for len(raw) > 0 {
		i := bytes.IndexByte(raw, '\n')
		line := raw
		if i >= 0 {
			line = raw[:i+1]
		}
		raw = raw[len(line):]
		t := bytes.TrimLeft(line, " \t")
		if len(t) >= len("TimeReceived:") && strings.EqualFold(string(t[:len("TimeReceived:")]), "TimeReceived:") {
			continue
		}
		out = append(out, line...)
	}
	return out
}

// loadScript reads a whole transcript. The recorder's own login (its
// response, and the FullyBooted and AMI SuccessfulAuth that came with it) and
// any other response are left out: they were answers to the recording
// session, not events.
func loadScript(r io.Reader) ([]scriptMsg, error) {
	t := ami.NewTranscript(r)
	if _, err := t.Banner(); err != nil {
		return nil, fmt.Errorf("amitest: transcript: %w", err)
	}
	var (
		m       ami.Message
		out     []scriptMsg
		leading = true
	)
	for {
		seq, at, err := t.Next(&m)
		if err != nil {
			var me *ami.MessageError
			if errors.As(err, &me) {
				continue
			}
			if err == io.EOF {
				return out, nil
			}
			return nil, fmt.Errorf("amitest: transcript: %w", err)
		}
		if m.IsResponse() {
			continue
		}
		ev := m.Get("Event")
		if leading && (strings.EqualFold(ev, "FullyBooted") ||
			strings.EqualFold(ev, "SuccessfulAuth") && strings.EqualFold(m.Get("Service"), "AMI")) {
			continue
		}
		leading = false
		out = append(out, newScriptMsg(&m, seq, at))
	}
}

// parseFrame turns an injected frame into a message, with CRLF line endings
// and the closing empty line.
func parseFrame(frame string) scriptMsg {
	text := strings.ReplaceAll(frame, "\r\n", "\n")
	text = strings.TrimRight(text, "\n")
	text = strings.ReplaceAll(text, "\n", "\r\n") + "\r\n\r\n"
	var m ami.Message
	r := ami.NewReader(strings.NewReader(text), ami.ReaderOptions{})
	if err := r.Next(&m); err != nil {
		return scriptMsg{raw: []byte(text)}
	}
	sm := newScriptMsg(&m, 0, time.Time{})
	sm.raw = []byte(text)
	return sm
}
