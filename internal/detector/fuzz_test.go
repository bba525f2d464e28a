package detector

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
)

const fuzzTranscripts = "../../testdata/transcripts/"

var fuzzFixtures = []string{"attack-mixed.ami", "after-rotation.ami", "hangup-events.ami", "pjsip-bruteforce.ami", "asterisk11-attack-sip.ami"}

// fixtureEvents returns the decoded events of every fixture transcript.
func fixtureEvents(tb testing.TB) [][]ami.Event {
	tb.Helper()
	var all [][]ami.Event
	for _, name := range fuzzFixtures {
		data, err := os.ReadFile(fuzzTranscripts + name)
		if err != nil {
			tb.Fatal(err)
		}
		tr := ami.NewTranscript(bytes.NewReader(data))
		if _, err := tr.Banner(); err != nil {
			tb.Fatal(err)
		}
		var (
			m   ami.Message
			evs []ami.Event
		)
		for {
			seq, ts, err := tr.Next(&m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				tb.Fatal(err)
			}
			var ev ami.Event
			if ami.Decode(&m, &ev) {
				ev.Seq, ev.Time = seq, ts
				evs = append(evs, ev)
			}
		}
		all = append(all, evs)
	}
	return all
}

// fixtureNumbers returns every dialled-looking string of the fixtures:
// Exten, DestExten, the number part of dial strings, AccountIDs.
func fixtureNumbers(tb testing.TB) []string {
	seen := map[string]bool{}
	var out []string
	for _, evs := range fixtureEvents(tb) {
		for i := range evs {
			ev := &evs[i]
			for _, s := range []string{ev.Exten, ev.DestExten, dialNumber(ev), ev.AccountID, ev.CallerIDNum} {
				if s != "" && !seen[s] {
					seen[s] = true
					out = append(out, s)
				}
			}
		}
	}
	return out
}

var dialledRE = regexp.MustCompile(`^\+?[0-9*#]+$`)

// FuzzNumbers checks number normalisation: IsDialled and the dialling
// plan's international and split classification, for any number and any
// plan the config package accepts.
func FuzzNumbers(f *testing.F) {
	for _, n := range fixtureNumbers(f) {
		f.Add(n, "", uint8(8), uint8(0b111))
		f.Add(n, "9", uint8(8), uint8(0b111))
	}
	for _, n := range []string{"900537123456", "902079460123", "+442079460000", "0011442079460000", "9011442079460001",
		"011", "00", "+", "9", "", "*97#", "s", "sip:200@pbx", "+\xff1", "0044\r\n2079"} {
		f.Add(n, "9", uint8(6), uint8(0b1111))
		f.Add(n, "", uint8(15), uint8(0b0101))
	}
	f.Fuzz(func(t *testing.T, num, outside string, digits, accessMask uint8) {
		// IsDialled: exactly an optional '+' and then 1 to 63 (or 64 without
		// '+') digits, '*' or '#'.
		want := len(num) <= 64 && dialledRE.MatchString(num)
		if got := IsDialled(num); got != want {
			t.Fatalf("IsDialled(%q) = %v, want %v", num, got, want)
		}

		// A plan as the config package validates it: outside_line digits,
		// access codes digits after an optional '+', digits 4..15.
		if !isDigitsOnly(outside) || len(outside) > 6 {
			outside = ""
		}
		codes := []string{"00", "011", "+", "0", "9", "+00", "810"}
		var access []string
		for i, c := range codes {
			if accessMask&(1<<i) != 0 {
				access = append(access, c)
			}
		}
		cfg := Default()
		cfg.OutsideLine = outside
		cfg.AccessCodes = access
		cfg.PrefixDigits = 4 + int(digits)%12
		cfg.AllowDestinations = []string{"112", "+1800"}
		p := newPlan(&cfg)

		intl, risky, rest := p.international(num)
		// Where the access code is looked for: after the outside line, if
		// the number starts with it and goes on.
		n := num
		if outside != "" && len(num) > len(outside) && strings.HasPrefix(num, outside) {
			n = num[len(outside):]
		}
		var matched string
		for _, ac := range access {
			if len(n) > len(ac) && strings.HasPrefix(n, ac) && len(ac) > len(matched) {
				matched = ac
			}
		}
		switch {
		case intl && matched == "":
			t.Fatalf("international(%q) with outside %q, codes %q: intl without an access code", num, outside, access)
		case !intl && matched != "":
			t.Fatalf("international(%q) with outside %q, codes %q: %q not seen", num, outside, access, matched)
		case !intl && (risky || rest != ""):
			t.Fatalf("international(%q): not intl but risky=%v rest=%q", num, risky, rest)
		}
		if intl {
			// The number is [outside] + the longest access code + rest,
			// and rest is not empty.
			if rest == "" || n != matched+rest || !strings.HasSuffix(num, rest) {
				t.Fatalf("international(%q) with outside %q, codes %q: rest %q (access code %q)", num, outside, access, rest, matched)
			}
			wantRisky := slices.ContainsFunc(cfg.HighRiskCountries, func(cc string) bool { return strings.HasPrefix(rest, cc) })
			if risky != wantRisky {
				t.Fatalf("international(%q): risky=%v, want %v (rest %q)", num, risky, wantRisky, rest)
			}
		}

		prefix, dest, ok := p.split(num)
		bare := strings.TrimRight(num, "#") // a trailing # ("dial now") is not part of the number
		if ok {
			if prefix+dest != bare || len(dest) != cfg.PrefixDigits || !isDigitsOnly(dest) {
				t.Fatalf("split(%q, %d) = %q + %q", num, cfg.PrefixDigits, prefix, dest)
			}
		} else if len(bare) >= cfg.PrefixDigits && isDigitsOnly(bare[len(bare)-cfg.PrefixDigits:]) {
			t.Fatalf("split(%q, %d) refused a number ending in %d digits", num, cfg.PrefixDigits, cfg.PrefixDigits)
		}
		if got, want := p.allowed(num), strings.HasPrefix(num, "112") || strings.HasPrefix(num, "+1800"); got != want {
			t.Fatalf("allowed(%q) = %v", num, got)
		}

		// The same number dialled behind two different prefixes has the
		// same destination: what prefix_guess counts.
		if ok && IsDialled(num) {
			if _, d2, ok2 := p.split("9" + num); !ok2 || d2 != dest {
				t.Fatalf("split(9%s) lost destination %q", num, dest)
			}
		}
	})
}

func isDigitsOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ---- FuzzDetector ----

// Fields of an encoded event, in order; a mask says which are present.
const (
	fzChannel = iota
	fzUniqueid
	fzLinkedid
	fzExten
	fzCallerIDNum
	fzDestChannel
	fzDestExten
	fzDialString
	fzService
	fzAccountID
	fzSessionID
	fzACLName
	fzPeer
	fzStatus
	fzAddr
	fzCause
)

// encodeEvents writes events in the format decodeEvents reads: per event an
// op byte (kind in the low nibble, security type in the high nibble; 0xF
// there marks the event forged, see ami.Event.Forged), the
// time step from the previous event (int16, units of 10 ms), a 16-bit mask
// of the fields present and each present field (a length byte and its
// bytes; Cause as one byte, which for a security event is UsingPassword in
// its low bit).
func encodeEvents(evs []ami.Event) []byte {
	var b []byte
	var prev time.Time
	for i := range evs {
		ev := &evs[i]
		op := byte(ev.Kind) | byte(ev.Security)<<4
		if ev.Forged {
			op |= forgedOp
		}
		b = append(b, op)
		step := int64(0)
		if !prev.IsZero() && !ev.Time.IsZero() {
			step = int64(ev.Time.Sub(prev) / (10 * time.Millisecond))
		}
		step = min(max(step, -32768), 32767)
		prev = ev.Time
		b = binary.BigEndian.AppendUint16(b, uint16(int16(step)))
		addr := ""
		if ev.RemoteAddr.IsValid() {
			addr = ev.RemoteAddr.String()
		} else if ev.Addr.IsValid() {
			addr = ev.Addr.String()
		}
		fields := [fzCause]string{ev.Channel, ev.Uniqueid, ev.Linkedid, ev.Exten, ev.CallerIDNum, ev.DestChannel,
			ev.DestExten, ev.DialString, ev.Service, ev.AccountID, ev.SessionID, ev.ACLName, ev.Peer, ev.Status, addr}
		var mask uint16
		for j, s := range fields {
			if s != "" {
				mask |= 1 << j
			}
		}
		cause := ev.Cause
		if ev.Kind == ami.KindSecurity && ev.UsingPassword {
			cause = 1
		}
		if cause != 0 {
			mask |= 1 << fzCause
		}
		b = binary.BigEndian.AppendUint16(b, mask)
		for _, s := range fields {
			if s != "" {
				s = s[:min(len(s), 255)]
				b = append(b, byte(len(s)))
				b = append(b, s...)
			}
		}
		if cause != 0 {
			b = append(b, byte(cause))
		}
	}
	return b
}

// Two ops that are not event kinds: kindResync runs Resync with the
// channels named by the event's Channel/Uniqueid/Linkedid/Exten and
// DestChannel/Linkedid/DestExten, as after a reconnect; kindReload runs
// SetConfig with other levels (caps and allow-lists unchanged).
const (
	kindReload = 14
	kindResync = 15
)

// forgedOp in an op byte's high nibble marks the event forged.
const forgedOp = 0xf0

// fuzzPools are values a field can name by reference: a length byte of
// 0xF0 or more picks one, so that mutations easily make events about the
// same channels, calls, numbers and addresses.
var fuzzPools = [fzCause][]string{
	fzChannel: {"SIP/200-0000000a", "SIP/200-0000000b", "SIP/201-0000000c", "PJSIP/300-00000001", "PJSIP/300-00000002",
		"SIP/carrier-0000000d", "PJSIP/trunk-00000003", "Local/200@ctx-00000004;1", "IAX2/u-12", "SIP/a.b*c-0000000e",
		"SIP/$(x)-0000000f", "SIP/office-200-00000010", "Local/s@ctx-00000005;2", "SIP/\xff-00000011", "IAX2/u-13", "SIP/200-0000001f"},
	fzUniqueid: {"1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.8"},
	fzLinkedid: {"1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.8"},
	fzExten: {"0011442079460000", "00442079460000", "011442079460000", "+442079460000", "9011442079460000", "900537123456",
		"0053123456", "02079460123", "112", "s", "200", "*97", "0044207946000#", "+", "18765551234", "01144"},
	fzCallerIDNum: {"200", "300", "0044207946", "$(reboot)"},
	fzDestChannel: {"SIP/carrier-00000020", "PJSIP/carrier-00000021", "SIP/201-00000022", "Local/200@ctx-00000004;2"},
	fzDestExten:   {"0011442079460000", "00442079460000", "+53123456", "s", "201", "9011442079460000"},
	fzDialString:  {"SIP/carrier/0044207946", "carrier/0011442079460000", "PJSIP/0053123456@carrier", "201", "carrier/s"},
	fzService:     {"SIP", "PJSIP", "IAX2", "AMI", "sip"},
	fzAccountID: {"200", "201", "300", "sip:200@pbx", "sip:300@pbx", "admin", "<unknown>", "0044207946", "+4420", "a.b*c",
		"$(x)", "carrier", "trunk", "0011442079460000", "sip:a.b*c@x", "1234567"},
	fzSessionID: {"0x1", "0x2", "c1@x", "c2@x"},
	fzACLName:   {"no_extension_match", "acl1"},
	fzPeer:      {"SIP/200", "SIP/201", "PJSIP/300", "300", "200", "SIP/$(x)", "IAX2/u", "SIP/carrier", "trunk", "a.b*c"},
	fzStatus:    {"Registered", "Reachable", "Unreachable", "Removed", "Unregistered", "Lagged", "Created"},
	fzAddr: {"192.0.2.1", "192.0.2.2", "192.0.2.3", "10.0.0.1", "2001:db8::1", "::ffff:192.0.2.1", "198.51.100.7",
		"203.0.113.9", "fe80::1%eth0", "0.0.0.0", "127.0.0.1"},
}

type fuzzStream struct{ b []byte }

func (s *fuzzStream) byte() (byte, bool) {
	if len(s.b) == 0 {
		return 0, false
	}
	c := s.b[0]
	s.b = s.b[1:]
	return c, true
}

func (s *fuzzStream) uint16() (uint16, bool) {
	if len(s.b) < 2 {
		return 0, false
	}
	v := binary.BigEndian.Uint16(s.b)
	s.b = s.b[2:]
	return v, true
}

// str reads a length byte and that many bytes, or a reference into pool.
func (s *fuzzStream) str(pool []string) (string, bool) {
	n, ok := s.byte()
	if !ok {
		return "", false
	}
	if n >= 0xf0 && len(pool) > 0 {
		return pool[int(n-0xf0)%len(pool)], true
	}
	m := min(int(n), len(s.b))
	v := string(s.b[:m])
	s.b = s.b[m:]
	return v, true
}

// next decodes one event; ok is false at the end of the input.
func (s *fuzzStream) next(ev *ami.Event, now *time.Time) (op byte, ok bool) {
	op, ok = s.byte()
	if !ok {
		return 0, false
	}
	step, ok := s.uint16()
	if !ok {
		return 0, false
	}
	mask, ok := s.uint16()
	if !ok {
		return 0, false
	}
	*ev = ami.Event{Kind: ami.Kind(op & 0x0f), Security: ami.SecurityType(op >> 4)}
	if op&forgedOp == forgedOp {
		ev.Security, ev.Forged, ev.ForgedField = ami.SecOther, true, "Channel"
	}
	*now = now.Add(time.Duration(int16(step)) * 10 * time.Millisecond)
	ev.Time = *now
	var fields [fzCause]string
	for j := range fields {
		if mask&(1<<j) != 0 {
			if fields[j], ok = s.str(fuzzPools[j]); !ok {
				return 0, false
			}
		}
	}
	ev.Channel, ev.Uniqueid, ev.Linkedid, ev.Exten, ev.CallerIDNum = fields[fzChannel], fields[fzUniqueid], fields[fzLinkedid], fields[fzExten], fields[fzCallerIDNum]
	ev.DestChannel, ev.DestExten, ev.DialString = fields[fzDestChannel], fields[fzDestExten], fields[fzDialString]
	ev.Service, ev.AccountID, ev.SessionID, ev.ACLName = fields[fzService], fields[fzAccountID], fields[fzSessionID], fields[fzACLName]
	ev.Peer, ev.Status = fields[fzPeer], fields[fzStatus]
	if mask&(1<<fzAddr) != 0 {
		if a, err := netip.ParseAddr(fields[fzAddr]); err == nil {
			ev.RemoteAddr, ev.Addr, ev.RemotePort, ev.Port = a, a, 5060, 5060
		}
	}
	if mask&(1<<fzCause) != 0 {
		c, ok := s.byte()
		if !ok {
			return 0, false
		}
		ev.Cause = int(c)
		if ev.Kind == ami.KindSecurity {
			ev.UsingPassword, ev.Cause = c&1 == 1, 0
		}
	}
	return op & 0x0f, true
}

// fuzzConfig is a valid configuration with tiny caps and low levels, so that
// a short input reaches the caps, the alerts and the cool-downs.
func fuzzConfig() Config {
	cfg := Default()
	cfg.CallRateBurst = Threshold{Window: time.Second, Warning: 2, Critical: 3}
	cfg.CallRate = Threshold{Window: 10 * time.Second, Warning: 3, Critical: 5}
	cfg.Concurrent = Threshold{Warning: 2, Critical: 3}
	cfg.PrefixGuess = Threshold{Window: 10 * time.Second, Warning: 2, Critical: 3}
	cfg.International = Threshold{Window: 10 * time.Second, Warning: 2, Critical: 3}
	cfg.HighRisk = Threshold{Window: 10 * time.Second, Warning: 1, Critical: 2}
	cfg.FailedProbes = Threshold{Window: 10 * time.Second, Warning: 2, Critical: 3}
	cfg.AuthFailures = Threshold{Window: 10 * time.Second, Warning: 2, Critical: 3}
	cfg.OutsideLine = "9"
	cfg.Cooldown = 2 * time.Second
	cfg.MaxExtensions = 3
	cfg.MaxAddresses = 3
	cfg.IdleExpiry = 30 * time.Second
	cfg.AllowExtensions = []string{"carrier", "PJSIP/trunk"}
	cfg.AllowNetworks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	cfg.AllowDestinations = []string{"112"}
	return cfg
}

func FuzzDetector(f *testing.F) {
	for _, evs := range fixtureEvents(f) {
		for i := 0; i < len(evs); i += 40 {
			f.Add(encodeEvents(evs[i:min(i+40, len(evs))]))
		}
	}
	// Hostile names and numbers, and many keys.
	ip := netip.MustParseAddr
	var hostile []ami.Event
	for i, ch := range []string{"SIP/a.b*c-0000000a", "SIP/x|y-0000000b", "SIP/(.*)-0000000c", "SIP/$(reboot)-0000000d",
		"PJSIP/;rm\t-rf-0000000e", "SIP/`id`-0000000f", "SIP/\xff\xfe-00000010", "Local/200@ctx-00000011;1", "IAX2/u-12"} {
		uid := "1795610000." + string(rune('a'+i))
		hostile = append(hostile,
			ami.Event{Kind: ami.KindSecurity, Security: ami.SecChallengeSent, Service: "SIP", AccountID: "sip:a.b*c@x", RemoteAddr: ip("192.0.2.9")},
			ami.Event{Kind: ami.KindNewchannel, Channel: ch, Uniqueid: uid, Linkedid: uid, Exten: "0011442079460000"},
			ami.Event{Kind: ami.KindDialBegin, Channel: ch, Uniqueid: uid, Linkedid: uid, DialString: "carrier/+53$(x)"},
			ami.Event{Kind: ami.KindSecurity, Security: ami.SecInvalidPassword, Service: "SIP", AccountID: "0044\r\n20", RemoteAddr: ip("::ffff:203.0.113." + string(rune('1'+i)))},
			ami.Event{Kind: ami.KindPeerStatus, Peer: "SIP/a.b*c", Status: "Registered", Addr: ip("198.51.100.7")},
			ami.Event{Kind: ami.KindHangup, Channel: ch, Uniqueid: uid, Linkedid: uid, Cause: 1},
		)
	}
	for i := range hostile {
		hostile[i].Time = time.Unix(1795610000, int64(i)*int64(100*time.Millisecond))
	}
	f.Add(encodeEvents(hostile))
	// Every kind and op once, on the same extension and address: an
	// originate learning its number at DialBegin, contacts and
	// registrations from two addresses (new_source), a reload, a resync.
	a1, a2 := ip("192.0.2.1"), ip("192.0.2.2")
	var tour []ami.Event
	for i := range 4 {
		uid := "1.1" + string(rune('0'+i))
		tour = append(tour,
			ami.Event{Kind: ami.KindSecurity, Security: ami.SecSuccessfulAuth, Service: "PJSIP", AccountID: "300", RemoteAddr: []netip.Addr{a1, a2}[i%2]},
			ami.Event{Kind: ami.KindContactStatus, Peer: "300", Status: "Reachable", Addr: a2},
			ami.Event{Kind: ami.KindPeerStatus, Peer: "SIP/200", Status: "Registered", Addr: []netip.Addr{a2, a1}[i%2]},
			ami.Event{Kind: ami.KindNewchannel, Channel: "Local/200@ctx-0000000" + string(rune('a'+i)) + ";1", Uniqueid: uid, Linkedid: uid, Exten: "s"},
			ami.Event{Kind: ami.KindDialBegin, Channel: "Local/200@ctx-0000000" + string(rune('a'+i)) + ";1", Uniqueid: uid, Linkedid: uid,
				DestChannel: "SIP/carrier-00000020", DestExten: "s", DialString: "carrier/00" + string(rune('1'+i)) + "1442079460000"},
			ami.Event{Kind: ami.KindDialEnd, Channel: "Local/200@ctx-0000000" + string(rune('a'+i)) + ";1", Uniqueid: uid, Linkedid: uid, DialStatus: "ANSWER"},
			ami.Event{Kind: ami.KindSecurity, Security: ami.SecFailedACL, Service: "SIP", ACLName: "no_extension_match", AccountID: "0044207946", RemoteAddr: ip("203.0.113.9")},
			ami.Event{Kind: ami.KindSecurity, Security: ami.SecChallengeResponseFailed, Service: "PJSIP", AccountID: "admin", SessionID: "c1@x", RemoteAddr: ip("203.0.113.9")},
			ami.Event{Kind: kindReload},
			ami.Event{Kind: kindResync, Channel: "PJSIP/300-00000001", Uniqueid: uid, Linkedid: uid, Exten: "0053123456",
				DestChannel: "SIP/201-00000022", DestExten: "00442079460000"},
			ami.Event{Kind: ami.KindHangup, Channel: "Local/200@ctx-0000000" + string(rune('a'+i)) + ";1", Uniqueid: uid, Linkedid: uid, Cause: 3},
			ami.Event{Kind: ami.KindFullyBooted},
			ami.Event{Kind: ami.KindNewchannel, Channel: "SIP/200-0000000a", Uniqueid: uid + "9", Exten: "0011442079460000", Forged: true},
		)
	}
	for i := range tour {
		tour[i].Time = time.Unix(1795610000, int64(i)*int64(300*time.Millisecond))
	}
	f.Add(encodeEvents(tour))

	cfg := fuzzConfig()
	// A reload: other levels and switches, the same caps and allow-lists.
	alt := cfg
	alt.UnauthenticatedCritical, alt.NewSource = true, false
	alt.CallRateBurst = Threshold{Window: 2 * time.Second, Warning: 0, Critical: 3} // rings keep their size
	alt.PrefixDigits, alt.OutsideLine, alt.AccessCodes = 6, "", []string{"00"}
	f.Fuzz(func(t *testing.T, data []byte) {
		d := New(cfg)
		s := &fuzzStream{b: data}
		now := time.Unix(1795610000, 0)
		var (
			ev      ami.Event
			alerts  []Alert
			live    []LiveChannel
			reloads int
		)
		for i := 0; i < 2048; i++ {
			op, ok := s.next(&ev, &now)
			if !ok {
				break
			}
			switch op {
			case kindResync:
				live = append(live[:0], LiveChannel{Channel: ev.Channel, Uniqueid: ev.Uniqueid, Linkedid: ev.Linkedid, Exten: ev.Exten},
					LiveChannel{Channel: ev.DestChannel, Uniqueid: ev.Linkedid, Linkedid: ev.Linkedid, Exten: ev.DestExten})
				alerts = d.Resync(now, live, alerts[:0])
			case kindReload:
				reloads++
				d.SetConfig([]Config{cfg, alt}[reloads%2])
				alerts = alerts[:0]
			default:
				ev.Seq = i + 1
				before := d.Stats()
				alerts = d.Process(&ev, alerts[:0])
				// A forged event is counted and changes nothing else.
				if after := d.Stats(); ev.Forged && (len(alerts) != 0 || after.Forged != before.Forged+1 ||
					after.Events != before.Events || after.Extensions != before.Extensions || after.Addresses != before.Addresses) {
					t.Fatalf("forged event %+v: %d alerts, stats %+v -> %+v", ev, len(alerts), before, after)
				}
			}
			checkAlerts(t, d, alerts)
			// The caps after every event; everything every 64 events
			// and at the end (a full check costs as much as the state).
			if st := d.Stats(); st.Extensions > cfg.MaxExtensions || st.Addresses > cfg.MaxAddresses {
				t.Fatalf("state past the caps: %+v", st)
			}
			if i%64 == 63 {
				checkState(t, d)
			}
		}
		checkState(t, d)
	})
}

// checkAlerts checks what the detector says: well-formed alerts about keys
// it tracks, with samples that are bounded and validated.
func checkAlerts(t *testing.T, d *Detector, alerts []Alert) {
	t.Helper()
	for i := range alerts {
		a := &alerts[i]
		if a.Rule == 0 || a.Rule >= numRules || (a.Severity != Warning && a.Severity != Critical) {
			t.Fatalf("bad alert %+v", a)
		}
		if len(a.Numbers) > maxSample || len(a.Accounts) > maxSample || len(a.Sources) > maxSourcesPerExt || len(a.Contacts) > maxContactsPerExt {
			t.Fatalf("alert samples not bounded: %+v", a)
		}
		for _, n := range a.Numbers {
			if !IsDialled(n) {
				t.Fatalf("alert number %q is not a dialled number", n)
			}
		}
		for _, acc := range a.Accounts {
			if !ami.ValidName(acc) {
				t.Fatalf("alert account %q is not a valid name", acc)
			}
		}
		for _, s := range slices.Concat(a.Sources, a.Contacts) {
			if !s.IsValid() || s != s.Unmap() {
				t.Fatalf("alert address %v", s)
			}
		}
		if a.IsExtension() {
			if a.IP.IsValid() || a.Tech == ami.TechUnknown {
				t.Fatalf("extension alert %+v", a)
			}
			e := d.exts[ami.Extension{Tech: a.Tech, Name: a.Extension}]
			if e == nil {
				t.Fatalf("alert about %s/%s, which is not tracked", a.Tech, a.Extension)
			}
			if d.extAllowed(e.key) {
				t.Fatalf("alert about allow-listed %s/%s", a.Tech, a.Extension)
			}
			if a.Severity == Critical && !e.authed && !d.cfg.UnauthenticatedCritical {
				t.Fatalf("critical alert about %s/%s, never seen authenticating", a.Tech, a.Extension)
			}
			continue
		}
		if !a.IP.IsValid() || a.IP != a.IP.Unmap() || d.addrAllowed(a.IP) || d.addrs[a.IP.As16()] == nil {
			t.Fatalf("address alert %+v", a)
		}
	}
}

// checkState checks the tracked state against the caps and its own indexes.
func checkState(t *testing.T, d *Detector) {
	t.Helper()
	cfg := &d.cfg
	if len(d.exts) > cfg.MaxExtensions || len(d.addrs) > cfg.MaxAddresses {
		t.Fatalf("state past the caps: %d extensions, %d addresses", len(d.exts), len(d.addrs))
	}
	if st := d.Stats(); st.Extensions != len(d.exts) || st.Addresses != len(d.addrs) {
		t.Fatalf("stats %+v", st)
	}
	if len(d.calls) > maxCallIndex {
		t.Fatalf("call index past its cap: %d calls", len(d.calls))
	}
	checkList(t, "extensions", d.extQ.front, d.extQ.back, d.extQ.n, len(d.exts), func(e *extState) *link[extState] { return &e.link },
		func(e *extState) bool { return d.exts[e.key] == e })
	checkList(t, "addresses", d.addrQ.front, d.addrQ.back, d.addrQ.n, len(d.addrs), func(a *addrState) *link[addrState] { return &a.link },
		func(a *addrState) bool { return d.addrs[a.key()] == a })
	has := map[*extState]map[string]bool{}
	for _, e := range d.exts {
		has[e] = map[string]bool{}
		for _, c := range e.calls {
			has[e][c.uniqueid] = true
		}
	}
	for uid, e := range d.calls {
		if d.exts[e.key] != e {
			t.Fatalf("call %q indexed to %s/%s, which is not tracked", uid, e.key.Tech, e.key.Name)
		}
		if !has[e][uid] {
			t.Fatalf("call %q indexed to %s/%s, which does not have it", uid, e.key.Tech, e.key.Name)
		}
	}
	for k, e := range d.exts {
		if e.key != k || d.extAllowed(k) {
			t.Fatalf("extension %v tracked as %v (allowed %v)", k, e.key, d.extAllowed(k))
		}
		act := e.act // nil until the extension places a call
		if act == nil {
			act = &extActivity{}
		}
		if len(e.calls) > maxCallsPerExt || len(e.sources) > maxSourcesPerExt || len(e.contacts) > maxContactsPerExt ||
			act.prefixes.dests() > maxDestsPerExt || len(act.numbers.list()) > maxSample {
			t.Fatalf("%s/%s: %d calls, %d sources, %d contacts, %d destinations, %d numbers",
				k.Tech, k.Name, len(e.calls), len(e.sources), len(e.contacts), act.prefixes.dests(), len(act.numbers.list()))
		}
		for _, r := range []struct {
			r ring
			t Threshold
		}{{act.burst, cfg.CallRateBurst}, {act.rate, cfg.CallRate}, {act.intl, cfg.International}, {act.highRisk, cfg.HighRisk}, {act.probes, cfg.FailedProbes}} {
			if len(r.r.ts) > ringSize(r.t) {
				t.Fatalf("%s/%s: a window holds %d entries (levels %+v)", k.Tech, k.Name, len(r.r.ts), r.t)
			}
		}
		perDest := map[numberKey]int{}
		for _, pe := range act.prefixes.e {
			if perDest[pe.dest]++; perDest[pe.dest] > ringSize(cfg.PrefixGuess) {
				t.Fatalf("%s/%s: %d prefixes for destination %x", k.Tech, k.Name, perDest[pe.dest], uint64(pe.dest))
			}
		}
		for _, c := range e.calls {
			cn, ok := ami.ParseChannel(c.channel)
			if !ok || cn.Tech != k.Tech || cn.Name != k.Name {
				t.Fatalf("%s/%s tracks channel %q", k.Tech, k.Name, c.channel)
			}
			if c.number != "" && !IsDialled(c.number) {
				t.Fatalf("%s/%s: call to %q", k.Tech, k.Name, c.number)
			}
		}
		if live := d.LiveChannels(k.Tech, k.Name, nil); len(live) != len(e.calls) {
			t.Fatalf("%s/%s: LiveChannels gives %d of %d calls", k.Tech, k.Name, len(live), len(e.calls))
		}
		if src := d.Sources(k.Tech, k.Name); len(src) != len(e.sources) {
			t.Fatalf("%s/%s: Sources gives %d of %d", k.Tech, k.Name, len(src), len(e.sources))
		}
		for _, s := range slices.Concat(e.sources, e.contacts) {
			if !s.addr.IsValid() || s.addr != s.addr.Unmap() {
				t.Fatalf("%s/%s: address %v", k.Tech, k.Name, s.addr)
			}
		}
	}
	for k, s := range d.addrs {
		a := s.addr
		if s.key() != k || !s.net().Contains(a) || !a.IsValid() || a != a.Unmap() || d.addrAllowed(a) {
			t.Fatalf("address %v (network %v) tracked as %v", a, s.net(), netip.AddrFrom16(k))
		}
		if len(s.auth.ts) > ringSize(cfg.AuthFailures) || len(s.probes.ts) > ringSize(cfg.FailedProbes) ||
			len(s.accounts.list()) > maxSample || len(s.numbers.list()) > maxSample {
			t.Fatalf("address %v state not bounded", a)
		}
	}
}

// checkList walks an lru list both ways and checks it holds exactly the
// tracked keys.
func checkList[T any](t *testing.T, what string, front, back *T, n, want int, lk func(*T) *link[T], tracked func(*T) bool) {
	t.Helper()
	if n != want {
		t.Fatalf("%s: list says %d, map has %d", what, n, want)
	}
	count := 0
	var prev *T
	for e := front; e != nil; e = lk(e).next {
		if count++; count > want {
			t.Fatalf("%s: list longer than %d", what, want)
		}
		if lk(e).prev != prev || !tracked(e) {
			t.Fatalf("%s: list broken at element %d", what, count)
		}
		prev = e
	}
	if count != want || prev != back {
		t.Fatalf("%s: list has %d elements, map %d", what, count, want)
	}
}
