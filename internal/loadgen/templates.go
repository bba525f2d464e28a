package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	astguard "github.com/astguard/astguard"
	"github.com/astguard/astguard/internal/ami"
)

// Every frame the generator sends is a real Asterisk 20.20.1 frame from
// testdata/transcripts/attack-mixed.ami (embedded in the binary as
// astguard.AttackTranscript) with only its values changed: same headers,
// same order. A template is such a frame cut into literal pieces and
// placeholders.

// Placeholders of a template.
const (
	pCH       = iota // the extension's channel, SIP/201-00000007
	pOUT             // the carrier leg, SIP/carrier-00000008
	pUID             // Uniqueid (and Linkedid) of the extension's channel
	pOUID            // Uniqueid of the carrier leg
	pBR              // BridgeUniqueid
	pNUM             // the dialled number
	pEXT             // the extension (or the account tried)
	pNAME            // caller name
	pIP              // the phone's address
	pTV              // EventTV
	pSESS            // SessionID
	pCAUSE           // Hangup Cause of the extension's leg
	pCAUSETXT        // its Cause-txt
	numPH
)

var phNames = [numPH]string{"CH", "OUT", "UID", "OUID", "BR", "NUM", "EXT", "NAME", "IP", "TV", "SESS", "CAUSE", "CAUSETXT"}

// Event classes, as manager.h numbers them (only those in the fixtures matter).
const (
	classSystem   uint32 = 1 << 0
	classCall     uint32 = 1 << 1
	classSecurity uint32 = 1 << 14
	classAll      uint32 = 1<<19 - 1
)

var classNames = map[string]uint32{
	"system": 1 << 0, "call": 1 << 1, "log": 1 << 2, "verbose": 1 << 3, "command": 1 << 4,
	"agent": 1 << 5, "user": 1 << 6, "config": 1 << 7, "dtmf": 1 << 8, "reporting": 1 << 9,
	"cdr": 1 << 10, "dialplan": 1 << 11, "originate": 1 << 12, "agi": 1 << 13, "security": 1 << 14,
	"aoc": 1 << 15, "test": 1 << 16, "cc": 1 << 17, "message": 1 << 18, "all": classAll,
}

// parseMask reads an event mask as the Events action takes it
// ("call,security,system", "on", "off", a number).
func parseMask(v string) uint32 {
	v = strings.TrimSpace(strings.ToLower(v))
	switch v {
	case "", "on", "yes", "all", "true":
		return classAll
	case "off", "no", "false", "0":
		return 0
	}
	var m uint32
	for _, p := range strings.Split(v, ",") {
		m |= classNames[strings.TrimSpace(p)]
	}
	return m
}

// seg is a literal followed by a placeholder (ph < 0: none).
type seg struct {
	lit []byte
	ph  int
}

// tframe is one template frame.
type tframe struct {
	event string
	class uint32 // classes of its Privilege, all of which the mask must hold
	segs  []seg
	keys  []string // header keys in order (tests)
	// label is the index in templates.labels of the type the guard's
	// astguard_events_total counts this frame under, -1 when the detector
	// does not use it.
	label int
}

// render appends the frame with vals filled in.
func (f *tframe) render(b []byte, vals *[numPH]string) []byte {
	for i := range f.segs {
		s := &f.segs[i]
		b = append(b, s.lit...)
		if s.ph >= 0 {
			b = append(b, vals[s.ph]...)
		}
	}
	return b
}

// rawFrame is a parsed transcript frame.
type rawFrame struct {
	hdrs [][2]string
	at   time.Time
}

func (f *rawFrame) get(k string) string {
	for _, h := range f.hdrs {
		if h[0] == k {
			return h[1]
		}
	}
	return ""
}

// parseTranscript reads a .ami transcript into frames (TimeReceived removed).
func parseTranscript(data []byte) ([]rawFrame, error) {
	t := ami.NewTranscript(bytes.NewReader(data))
	var out []rawFrame
	var m ami.Message
	for {
		_, at, err := t.Next(&m)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		var f rawFrame
		f.at = at
		for i := 0; i < m.Len(); i++ {
			k := string(m.Key(i))
			if k == "TimeReceived" {
				continue
			}
			f.hdrs = append(f.hdrs, [2]string{k, string(m.Value(i))})
		}
		out = append(out, f)
	}
}

// subst says how a frame's values become placeholders: exact values,
// substrings (replaced by a text with {PH} markers) and keys whose value is
// always a placeholder.
type subst struct {
	exact map[string]int
	sub   [][2]string // old, new with {PH} markers; applied in order
	keys  map[string]int
}

var defaultKeys = map[string]int{"EventTV": pTV, "SessionID": pSESS}

func (s *subst) template(f *rawFrame) (tframe, error) {
	var tf tframe
	tf.event = f.get("Event")
	tf.label = labelIndex(metricLabel(f))
	tf.class = classAll
	if p := f.get("Privilege"); p != "" {
		tf.class = 0
		for _, c := range strings.Split(p, ",") {
			if c != "all" {
				tf.class |= classNames[c]
			}
		}
	}
	var text strings.Builder
	for _, h := range f.hdrs {
		tf.keys = append(tf.keys, h[0])
		text.WriteString(h[0])
		text.WriteString(": ")
		v := h[1]
		if ph, ok := s.keys[h[0]]; ok {
			v = "{" + phNames[ph] + "}"
		} else if ph, ok := defaultKeys[h[0]]; ok {
			v = "{" + phNames[ph] + "}"
		} else if ph, ok := s.exact[v]; ok {
			v = "{" + phNames[ph] + "}"
		} else {
			for _, r := range s.sub {
				v = strings.ReplaceAll(v, r[0], r[1])
			}
		}
		text.WriteString(v)
		text.WriteString("\r\n")
	}
	text.WriteString("\r\n")
	// Cut at the markers.
	rest := text.String()
	for {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			tf.segs = append(tf.segs, seg{lit: []byte(rest), ph: -1})
			return tf, nil
		}
		j := strings.IndexByte(rest[i:], '}')
		ph := -1
		if j > 0 {
			name := rest[i+1 : i+j]
			for n, pn := range phNames {
				if pn == name {
					ph = n
				}
			}
		}
		if ph < 0 { // a literal brace
			tf.segs = append(tf.segs, seg{lit: []byte(rest[:i+1]), ph: -1})
			rest = rest[i+1:]
			continue
		}
		tf.segs = append(tf.segs, seg{lit: []byte(rest[:i]), ph: ph})
		rest = rest[i+j+1:]
	}
}

// callTemplate is the frames of one outgoing call through the carrier:
// those sent when it is placed (authentication, Newchannel ... BridgeEnter)
// and those sent when it ends (... Hangup of both legs).
type callTemplate struct {
	setup, teardown []tframe
	// source frames, for the tests
	rawSetup, rawTeardown []rawFrame
}

// templates are all the generator sends.
type templates struct {
	sipCall, pjsipCall   callTemplate
	sipRegister          []tframe // ChallengeSent, PeerStatus, SuccessfulAuth
	pjsipRegister        []tframe // ChallengeSent, SuccessfulAuth
	sipAuthFail          []tframe // ChallengeSent, InvalidPassword
	failedACL            tframe   // a refused +number
	rawSIPRegister       []rawFrame
	rawSIPAuthFail       []rawFrame
	rawPJSIPRegister     []rawFrame
	rawFailedACL         rawFrame
	sipCallNewchannelIdx int // index of the Newchannel in sipCall.setup
}

// extractCall finds the call whose Newchannel is frames[nc] and collects
// every frame of it: the frames in pre, those naming its channels, unique
// ids or bridge, and the DeviceStateChange frames inside its span. Frames
// received within a second of the Newchannel are the setup, the rest the
// teardown.
func extractCall(frames []rawFrame, pre []int, nc int) (setup, teardown []rawFrame, ids map[string]string, err error) {
	f := &frames[nc]
	if f.get("Event") != "Newchannel" {
		return nil, nil, nil, fmt.Errorf("frame %d is not a Newchannel", nc)
	}
	ids = map[string]string{"ch": f.get("Channel"), "uid": f.get("Uniqueid")}
	for i := nc; i < len(frames); i++ {
		g := &frames[i]
		if g.get("Event") == "DialBegin" && g.get("Channel") == ids["ch"] {
			ids["out"], ids["ouid"] = g.get("DestChannel"), g.get("DestUniqueid")
		}
		if g.get("Event") == "BridgeEnter" && g.get("Channel") == ids["ch"] {
			ids["br"] = g.get("BridgeUniqueid")
			break
		}
	}
	if ids["out"] == "" || ids["br"] == "" {
		return nil, nil, nil, fmt.Errorf("call at frame %d has no DialBegin or BridgeEnter", nc)
	}
	related := func(g *rawFrame) bool {
		for _, h := range g.hdrs {
			switch h[1] {
			case ids["ch"], ids["out"], ids["uid"], ids["ouid"], ids["br"]:
				return true
			}
		}
		return false
	}
	for _, i := range pre {
		setup = append(setup, frames[i])
	}
	lastSetup, firstDown, lastDown := nc, -1, -1
	for i := nc; i < len(frames); i++ {
		if related(&frames[i]) {
			if frames[i].at.Sub(f.at) < time.Second {
				lastSetup = i
			} else {
				if firstDown < 0 {
					firstDown = i
				}
				lastDown = i
			}
		}
	}
	dev := strings.SplitN(ids["out"], "-", 2)[0]
	for i := nc; i < len(frames); i++ {
		g := &frames[i]
		inSetup := i <= lastSetup
		inDown := firstDown >= 0 && i >= firstDown && i <= lastDown
		ok := related(g) || (g.get("Event") == "DeviceStateChange" && g.get("Device") == dev && (inSetup || inDown))
		if !ok {
			continue
		}
		if inSetup {
			setup = append(setup, *g)
		} else if inDown {
			teardown = append(teardown, *g)
		}
	}
	return setup, teardown, ids, nil
}

func (s *subst) all(fs []rawFrame) ([]tframe, error) {
	out := make([]tframe, 0, len(fs))
	for i := range fs {
		tf, err := s.template(&fs[i])
		if err != nil {
			return nil, err
		}
		out = append(out, tf)
	}
	return out, nil
}

func findFrame(frames []rawFrame, from int, match func(*rawFrame) bool) int {
	for i := from; i < len(frames); i++ {
		if match(&frames[i]) {
			return i
		}
	}
	return -1
}

// loadTemplates returns the templates, built once from attack-mixed.ami:
// they are never changed afterwards.
var loadTemplates = sync.OnceValues(buildTemplates)

// buildTemplates builds the templates from attack-mixed.ami.
func buildTemplates() (*templates, error) {
	frames, err := parseTranscript(astguard.AttackTranscript)
	if err != nil {
		return nil, err
	}
	t := &templates{}
	ev := func(name string) func(*rawFrame) bool {
		return func(f *rawFrame) bool { return f.get("Event") == name }
	}
	// 201's registration: ChallengeSent, PeerStatus, SuccessfulAuth from 127.0.0.3.
	ps := findFrame(frames, 0, func(f *rawFrame) bool { return f.get("Event") == "PeerStatus" && f.get("Peer") == "SIP/201" })
	if ps < 1 || frames[ps-1].get("Event") != "ChallengeSent" || frames[ps+1].get("Event") != "SuccessfulAuth" {
		return nil, errors.New("attack-mixed: no registration of 201")
	}
	t.rawSIPRegister = frames[ps-1 : ps+2]
	regSub := &subst{exact: map[string]int{"201": pEXT}, sub: [][2]string{{"SIP/201", "SIP/{EXT}"}, {"127.0.0.3", "{IP}"}}}
	if t.sipRegister, err = regSub.all(t.rawSIPRegister); err != nil {
		return nil, err
	}
	// 300's registration (PJSIP): ChallengeSent, SuccessfulAuth from 127.0.0.5.
	pa := findFrame(frames, 0, func(f *rawFrame) bool {
		return f.get("Event") == "SuccessfulAuth" && f.get("Service") == "PJSIP" && f.get("AccountID") == "300"
	})
	if pa < 1 || frames[pa-1].get("Event") != "ChallengeSent" {
		return nil, errors.New("attack-mixed: no registration of 300")
	}
	t.rawPJSIPRegister = frames[pa-1 : pa+1]
	pregSub := &subst{exact: map[string]int{"300": pEXT}, sub: [][2]string{{"127.0.0.5", "{IP}"}}}
	if t.pjsipRegister, err = pregSub.all(t.rawPJSIPRegister); err != nil {
		return nil, err
	}
	// 127.0.0.4 guessing 200's secret: ChallengeSent, InvalidPassword.
	ip := findFrame(frames, 0, func(f *rawFrame) bool {
		return f.get("Event") == "InvalidPassword" && strings.Contains(f.get("RemoteAddress"), "/127.0.0.4/")
	})
	if ip < 1 || frames[ip-1].get("Event") != "ChallengeSent" {
		return nil, errors.New("attack-mixed: no InvalidPassword from 127.0.0.4")
	}
	t.rawSIPAuthFail = frames[ip-1 : ip+1]
	failSub := &subst{keys: map[string]int{"AccountID": pEXT}, sub: [][2]string{{"127.0.0.4", "{IP}"}}}
	if t.sipAuthFail, err = failSub.all(t.rawSIPAuthFail); err != nil {
		return nil, err
	}
	// A refused +44 call of 200.
	fa := findFrame(frames, 0, ev("FailedACL"))
	if fa < 0 {
		return nil, errors.New("attack-mixed: no FailedACL")
	}
	t.rawFailedACL = frames[fa]
	aclSub := &subst{keys: map[string]int{"AccountID": pNUM}, sub: [][2]string{{"127.0.0.2", "{IP}"}}}
	if t.failedACL, err = aclSub.template(&t.rawFailedACL); err != nil {
		return nil, err
	}

	// 201's first call of its own (Newchannel with Uniqueid = Linkedid),
	// preceded by the INVITE's ChallengeSent.
	nc := findFrame(frames, 0, func(f *rawFrame) bool {
		return f.get("Event") == "Newchannel" && strings.HasPrefix(f.get("Channel"), "SIP/201-") && f.get("Uniqueid") == f.get("Linkedid")
	})
	if nc < 1 || frames[nc-1].get("Event") != "ChallengeSent" {
		return nil, errors.New("attack-mixed: no call of 201")
	}
	setup, down, ids, err := extractCall(frames, []int{nc - 1}, nc)
	if err != nil {
		return nil, err
	}
	if err := t.sipCall.build(setup, down, ids, "201", "Bob", "127.0.0.3"); err != nil {
		return nil, err
	}
	t.sipCallNewchannelIdx = 1
	// 300's first call, preceded by its ChallengeSent and SuccessfulAuth.
	nc = findFrame(frames, 0, func(f *rawFrame) bool {
		return f.get("Event") == "Newchannel" && strings.HasPrefix(f.get("Channel"), "PJSIP/300-") && f.get("Uniqueid") == f.get("Linkedid")
	})
	if nc < 2 || frames[nc-1].get("Event") != "SuccessfulAuth" || frames[nc-2].get("Event") != "ChallengeSent" {
		return nil, errors.New("attack-mixed: no call of 300")
	}
	setup, down, ids, err = extractCall(frames, []int{nc - 2, nc - 1}, nc)
	if err != nil {
		return nil, err
	}
	if err := t.pjsipCall.build(setup, down, ids, "300", "Carol", "127.0.0.5"); err != nil {
		return nil, err
	}
	return t, nil
}

func (c *callTemplate) build(setup, down []rawFrame, ids map[string]string, ext, name, ip string) error {
	c.rawSetup, c.rawTeardown = setup, down
	num := ""
	for _, f := range setup {
		if f.get("Event") == "Newchannel" && f.get("Channel") == ids["ch"] {
			num = f.get("Exten")
		}
	}
	tech := strings.SplitN(ids["ch"], "/", 2)[0]
	s := &subst{
		exact: map[string]int{ext: pEXT, name: pNAME, ids["ch"]: pCH, ids["out"]: pOUT, ids["uid"]: pUID, ids["ouid"]: pOUID, ids["br"]: pBR, num: pNUM},
		sub: [][2]string{
			{ids["ch"], "{CH}"}, {ids["out"], "{OUT}"}, {ids["br"], "{BR}"},
			{"carrier/" + num, "carrier/{NUM}"}, {num, "{NUM}"},
			{"sip:" + ext + "@", "sip:{EXT}@"}, {tech + "/" + ext, tech + "/{EXT}"}, {ip, "{IP}"},
		},
	}
	var err error
	if c.setup, err = s.all(setup); err != nil {
		return err
	}
	// The teardown's Hangup of the extension's leg carries the cause the
	// call ended with (16 normally, the guard's cause when it hangs up).
	for i := range down {
		f := &down[i]
		cp := *f
		cp.hdrs = append([][2]string(nil), f.hdrs...)
		tf, err := s.template(&cp)
		if err != nil {
			return err
		}
		if f.get("Event") == "Hangup" && f.get("Channel") == ids["ch"] {
			ks := &subst{exact: s.exact, sub: s.sub, keys: map[string]int{"Cause": pCAUSE, "Cause-txt": pCAUSETXT}}
			if tf, err = ks.template(&cp); err != nil {
				return err
			}
		}
		c.teardown = append(c.teardown, tf)
	}
	return nil
}

// eventLabels are the values of astguard_events_total's type label that
// the generator's frames are counted under, in the order labelIndex met
// them; a frame's tframe.label indexes it. Filled by buildTemplates only.
var eventLabels []string

// labelIndex returns the index of label in eventLabels, adding it; -1 for "".
func labelIndex(label string) int {
	if label == "" {
		return -1
	}
	for i, l := range eventLabels {
		if l == label {
			return i
		}
	}
	eventLabels = append(eventLabels, label)
	return len(eventLabels) - 1
}

// metricLabel decodes the frame as the guard does and returns the type it
// counts it under in astguard_events_total (the event kind, or for a
// security event its type, "Security" for the other types); "" when the
// detector does not use it.
func metricLabel(f *rawFrame) string {
	var b []byte
	for _, h := range f.hdrs {
		b = append(b, h[0]...)
		b = append(b, ": "...)
		b = append(b, h[1]...)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	var m ami.Message
	var ev ami.Event
	if ami.NewReader(bytes.NewReader(b), ami.ReaderOptions{}).Next(&m) != nil || !ami.Decode(&m, &ev) {
		return ""
	}
	if ev.Kind == ami.KindSecurity {
		if ev.Security == ami.SecOther {
			return "Security"
		}
		return ev.Security.String()
	}
	return ev.Kind.String()
}
