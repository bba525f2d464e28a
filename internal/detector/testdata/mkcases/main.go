// Command mkcases writes the input transcripts of the detector's synthetic
// cases (internal/detector/testdata/cases/<case>/input.ami). Every frame is a
// real Asterisk 20 frame taken from testdata/transcripts/attack-mixed.ami
// (for the asterisk11-* cases, a real Asterisk 11 frame from
// testdata/transcripts/asterisk11-attack-sip.ami) with only its values
// changed, so header sets and order are exactly what Asterisk sends. Run
// from the repository root:
//
//	go run ./internal/detector/testdata/mkcases
package main

import (
	"bytes"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

const (
	source   = "testdata/transcripts/attack-mixed.ami"
	source11 = "testdata/transcripts/asterisk11-attack-sip.ami"
	outDir   = "internal/detector/testdata/cases"
)

// frame is an ordered list of headers.
type frame [][2]string

func (f frame) clone() frame { return append(frame(nil), f...) }

func (f frame) get(k string) string {
	for _, h := range f {
		if h[0] == k {
			return h[1]
		}
	}
	return ""
}

// set replaces the value of k, which must exist in the template.
func (f frame) set(k, v string) frame {
	for i := range f {
		if f[i][0] == k {
			f[i][1] = v
			return f
		}
	}
	log.Fatalf("template %s has no header %s", f.get("Event"), k)
	return f
}

var templates, templates11 = map[string]frame{}, map[string]frame{}

// readFrames returns the messages of a transcript, without TimeReceived.
func readFrames(path string) []frame {
	data, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	var out []frame
	for i, m := range strings.Split(string(data), "\r\n\r\n") {
		lines := strings.Split(m, "\r\n")
		if i == 0 {
			lines = lines[1:]
		}
		var f frame
		for _, l := range lines {
			k, v, ok := strings.Cut(l, ": ")
			if !ok {
				k, v = strings.TrimSuffix(l, ":"), ""
			}
			if k == "TimeReceived" {
				continue
			}
			f = append(f, [2]string{k, v})
		}
		if len(f) > 0 {
			out = append(out, f)
		}
	}
	return out
}

// loadTemplates keeps the first frame of each kind the cases need.
func loadTemplates() {
	for _, f := range readFrames(source) {
		name := f.get("Event")
		switch {
		case name == "Newchannel" && f.get("Uniqueid") == f.get("Linkedid"):
			name = "Newchannel-orig"
		case name == "SuccessfulAuth" || name == "ChallengeResponseFailed":
			name += "-" + f.get("Service")
		}
		if _, ok := templates[name]; !ok && name != "" {
			templates[name] = f
		}
	}
	for _, n := range []string{"Newchannel-orig", "DialBegin", "DialEnd", "Hangup", "PeerStatus", "SuccessfulAuth-SIP", "SuccessfulAuth-PJSIP", "InvalidPassword", "FailedACL", "ChallengeResponseFailed-SIP", "Newstate"} {
		if templates[n] == nil {
			log.Fatalf("no %s frame in %s", n, source)
		}
	}
	// Asterisk 11: a Newchannel with an Exten (a channel a phone brought
	// in) and one without (a leg Dial created), Dial Begin and End.
	for _, f := range readFrames(source11) {
		name := f.get("Event")
		switch {
		case name == "Newchannel" && f.get("Exten") != "":
			name = "Newchannel-in"
		case name == "Newchannel":
			name = "Newchannel-out"
		case name == "Dial":
			name += "-" + f.get("SubEvent")
		}
		if _, ok := templates11[name]; !ok && name != "" {
			templates11[name] = f
		}
	}
	for _, n := range []string{"Newchannel-in", "Newchannel-out", "Dial-Begin", "Dial-End", "Hangup", "PeerStatus"} {
		if templates11[n] == nil {
			log.Fatalf("no %s frame in %s", n, source11)
		}
	}
}

type timed struct {
	t time.Time
	n int
	f frame
}

// script collects frames at times relative to a base and writes them sorted.
type script struct {
	base   time.Time
	frames []timed
	chanNo int
	uidNo  int
	sess   int
	banner string
}

func newScript() *script {
	return &script{base: time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC), chanNo: 0x100, uidNo: 500,
		banner: "Asterisk Call Manager/9.0.0"}
}

// newScript11 is a script of Asterisk 11 frames.
func newScript11() *script {
	s := newScript()
	s.banner = "Asterisk Call Manager/1.3"
	return s
}

func (s *script) at(sec float64) time.Time {
	return s.base.Add(time.Duration(sec * float64(time.Second)))
}

func (s *script) add(t time.Time, f frame) {
	s.frames = append(s.frames, timed{t, len(s.frames), f})
}

func (s *script) uid(t time.Time) string {
	s.uidNo++
	return fmt.Sprintf("%d.%d", t.Unix(), s.uidNo)
}

func (s *script) channel(tech, name string) string {
	s.chanNo++
	return fmt.Sprintf("%s/%s-%08x", tech, name, s.chanNo)
}

func eventTV(t time.Time) string { return t.Format("2006-01-02T15:04:05.000-0700") }

func remote(ip string, port int) string { return fmt.Sprintf("IPV4/UDP/%s/%d", ip, port) }

// register: a chan_sip REGISTER (PeerStatus + SuccessfulAuth) or a PJSIP one.
func (s *script) register(sec float64, tech, ext, ip string, port int) {
	t := s.at(sec)
	if tech == "SIP" {
		s.add(t, templates["PeerStatus"].clone().set("Peer", "SIP/"+ext).set("Address", fmt.Sprintf("%s:%d", ip, port)))
	}
	s.auth(t, tech, ext, ip, port)
}

func (s *script) auth(t time.Time, tech, ext, ip string, port int) {
	s.sess++
	sa := templates["SuccessfulAuth-"+tech].clone().set("EventTV", eventTV(t)).set("AccountID", ext).
		set("RemoteAddress", remote(ip, port))
	if tech == "PJSIP" {
		sa = sa.set("SessionID", fmt.Sprintf("%d-4242@%s", s.sess, ip))
	} else {
		sa = sa.set("SessionID", fmt.Sprintf("0x7fa2b4%06x", s.sess))
	}
	s.add(t, sa)
}

// call: ext places a call to number through the carrier, answered, lasting dur.
func (s *script) call(sec float64, tech, ext, ip, number string, dur float64) {
	t := s.at(sec)
	if tech == "PJSIP" {
		s.auth(t, tech, ext, ip, 5073) // PJSIP authenticates every INVITE
	}
	ch, uid := s.channel(tech, ext), s.uid(t)
	out, ouid := s.channel("SIP", "carrier"), s.uid(t)
	s.add(t, templates["Newchannel-orig"].clone().set("Channel", ch).set("CallerIDNum", ext).set("CallerIDName", "User "+ext).
		set("Exten", number).set("Uniqueid", uid).set("Linkedid", uid))
	s.add(t, templates["DialBegin"].clone().set("Channel", ch).set("CallerIDNum", ext).set("CallerIDName", "User "+ext).
		set("Exten", number).set("Uniqueid", uid).set("Linkedid", uid).set("DestChannel", out).
		set("DestCallerIDNum", number).set("DestConnectedLineNum", ext).set("DestExten", number).
		set("DestUniqueid", ouid).set("DestLinkedid", uid).set("DialString", "carrier/"+number))
	s.add(t, templates["DialEnd"].clone().set("Channel", ch).set("CallerIDNum", ext).set("CallerIDName", "User "+ext).
		set("Exten", number).set("Uniqueid", uid).set("Linkedid", uid).set("DestChannel", out).
		set("DestCallerIDNum", number).set("DestConnectedLineNum", ext).
		set("DestUniqueid", ouid).set("DestLinkedid", uid))
	end := s.at(sec + dur)
	s.add(end, templates["Hangup"].clone().set("Channel", ch).set("CallerIDNum", ext).set("Exten", number).
		set("Context", "from-internal").set("Uniqueid", uid).set("Linkedid", uid))
	s.add(end, templates["Hangup"].clone().set("Channel", out).set("CallerIDNum", number).
		set("Uniqueid", ouid).set("Linkedid", uid))
}

// incoming: a call from the carrier to ext (the extension's leg is created by Dial).
func (s *script) incoming(sec float64, ext, did string, dur float64) {
	t := s.at(sec)
	in, iuid := s.channel("SIP", "carrier"), s.uid(t)
	leg, luid := s.channel("SIP", ext), s.uid(t)
	s.add(t, templates["Newchannel-orig"].clone().set("Channel", in).set("CallerIDNum", "02079460999").
		set("CallerIDName", "<unknown>").set("Context", "from-carrier").set("Exten", did).set("Uniqueid", iuid).set("Linkedid", iuid))
	nc := templates["Newchannel-orig"].clone().set("Channel", leg).set("CallerIDNum", ext).set("Context", "from-internal").
		set("Exten", "s").set("Uniqueid", luid).set("Linkedid", iuid)
	s.add(t, nc)
	s.add(t, templates["DialBegin"].clone().set("Channel", in).set("CallerIDNum", "02079460999").
		set("Context", "from-carrier").set("Exten", did).set("Uniqueid", iuid).set("Linkedid", iuid).
		set("DestChannel", leg).set("DestExten", ext).set("DestUniqueid", luid).set("DestLinkedid", iuid).
		set("DialString", "SIP/"+ext))
	end := s.at(sec + dur)
	s.add(end, templates["Hangup"].clone().set("Channel", leg).set("CallerIDNum", ext).set("Uniqueid", luid).set("Linkedid", iuid))
	s.add(end, templates["Hangup"].clone().set("Channel", in).set("CallerIDNum", "02079460999").set("Context", "from-carrier").
		set("Exten", did).set("Uniqueid", iuid).set("Linkedid", iuid))
}

// originateLocal: a click-to-dial Originate of Local/ext@from-internal whose
// ;2 half dials the number (the number is not in the ;1 Newchannel).
func (s *script) originateLocal(sec float64, ext, number string, dur float64) {
	t := s.at(sec)
	n := s.chanNo + 1
	s.chanNo++
	l1 := fmt.Sprintf("Local/%s@from-internal-%08x;1", ext, n)
	l2 := fmt.Sprintf("Local/%s@from-internal-%08x;2", ext, n)
	u1, u2 := s.uid(t), s.uid(t)
	out, ouid := s.channel("SIP", "carrier"), s.uid(t)
	s.add(t, templates["Newchannel-orig"].clone().set("Channel", l1).set("CallerIDNum", "<unknown>").
		set("CallerIDName", "<unknown>").set("Exten", "s").set("Uniqueid", u1).set("Linkedid", u1))
	s.add(t, templates["Newchannel-orig"].clone().set("Channel", l2).set("CallerIDNum", "<unknown>").
		set("CallerIDName", "<unknown>").set("Exten", ext).set("Uniqueid", u2).set("Linkedid", u1))
	s.add(t, templates["DialBegin"].clone().set("Channel", l2).set("CallerIDNum", ext).set("Exten", number).
		set("Uniqueid", u2).set("Linkedid", u1).set("DestChannel", out).set("DestExten", number).
		set("DestUniqueid", ouid).set("DestLinkedid", u1).set("DialString", "carrier/"+number))
	end := s.at(sec + dur)
	for _, h := range [][2]string{{out, ouid}, {l2, u2}, {l1, u1}} {
		s.add(end, templates["Hangup"].clone().set("Channel", h[0]).set("Uniqueid", h[1]).set("Linkedid", u1))
	}
}

// register11: a chan_sip REGISTER on Asterisk 11, where PeerStatus is all
// the AMI says (no security events).
func (s *script) register11(sec float64, ext, ip string, port int) {
	s.add(s.at(sec), templates11["PeerStatus"].clone().set("Peer", "SIP/"+ext).set("Address", fmt.Sprintf("%s:%d", ip, port)))
}

// dial11 adds an Asterisk 11 call from channel ch (uid, dialplan extension
// exten, in context) that dials a new leg of peer to (whose Newchannel has no
// Exten and the peer's own context; its caller id is legCID when it ends),
// answered, both ending after dur.
func (s *script) dial11(sec float64, ch, uid, cidNum, exten, context, to, toContext, legCID, dialString string, dur float64) {
	t := s.at(sec)
	out, ouid := s.channel("SIP", to), s.uid(t)
	s.add(t, templates11["Newchannel-in"].clone().set("Channel", ch).set("CallerIDNum", cidNum).
		set("CallerIDName", "").set("Exten", exten).set("Context", context).set("Uniqueid", uid))
	s.add(t, templates11["Newchannel-out"].clone().set("Channel", out).set("Context", toContext).set("Uniqueid", ouid))
	s.add(t, templates11["Dial-Begin"].clone().set("Channel", ch).set("Destination", out).set("CallerIDNum", cidNum).
		set("CallerIDName", "").set("UniqueID", uid).set("DestUniqueID", ouid).set("Dialstring", dialString))
	end := s.at(sec + dur)
	s.add(end, templates11["Hangup"].clone().set("Channel", out).set("Uniqueid", ouid).set("CallerIDNum", legCID).
		set("ConnectedLineNum", cidNum).set("ConnectedLineName", ""))
	s.add(end, templates11["Dial-End"].clone().set("Channel", ch).set("UniqueID", uid))
	s.add(end, templates11["Hangup"].clone().set("Channel", ch).set("Uniqueid", uid).set("CallerIDNum", cidNum).
		set("CallerIDName", ""))
}

// call11: ext places a call to number through the carrier on Asterisk 11.
func (s *script) call11(sec float64, ext, number string, dur float64) {
	t := s.at(sec)
	s.dial11(sec, s.channel("SIP", ext), s.uid(t), ext, number, "from-internal", "carrier", "from-carrier", number, "carrier/"+number, dur)
}

// incoming11: a call from the carrier to did, ringing ext, on Asterisk 11.
func (s *script) incoming11(sec float64, ext, did string, dur float64) {
	t := s.at(sec)
	s.dial11(sec, s.channel("SIP", "carrier"), s.uid(t), "02079460999", did, "from-carrier", ext, "from-internal", "02079460999", ext, dur)
}

// authFail: one failed request from ip (chan_sip InvalidPassword or a PJSIP
// request that raises ChallengeResponseFailed).
func (s *script) authFail(sec float64, service, typ, account, ip, session string) {
	t := s.at(sec)
	var f frame
	switch typ {
	case "InvalidPassword":
		f = templates["InvalidPassword"].clone()
	case "ChallengeResponseFailed":
		f = templates["ChallengeResponseFailed-SIP"].clone()
	default:
		log.Fatalf("authFail: %s", typ)
	}
	f = f.set("EventTV", eventTV(t)).set("Service", service).set("AccountID", account).
		set("RemoteAddress", remote(ip, 5090)).set("SessionID", session)
	s.add(t, f)
}

func (s *script) write(name string) {
	sort.SliceStable(s.frames, func(i, j int) bool { return s.frames[i].t.Before(s.frames[j].t) })
	var b bytes.Buffer
	b.WriteString(s.banner + "\r\n")
	login := s.base.Add(-time.Second).Format("2006-01-02T15:04:05.000000Z")
	b.WriteString("Response: Success\r\nMessage: Authentication accepted\r\nTimeReceived: " + login + "\r\n\r\n")
	for _, tf := range s.frames {
		for _, h := range tf.f {
			b.WriteString(h[0] + ": " + h[1] + "\r\n")
		}
		b.WriteString("TimeReceived: " + tf.t.Format("2006-01-02T15:04:05.000000Z") + "\r\n\r\n")
	}
	dir := filepath.Join(outDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "input.ami"), b.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %d messages\n", dir, len(s.frames)+1)
}

// UK national numbers from Ofcom's drama ranges. None starts with 011: in the
// UK 0113-0118 are area codes, which the default access code 011 (the NANP
// exit code) would read as international; UK sites drop "011" from access_codes.
var nationals = []string{"02079460123", "01632960001", "01214960002", "01314960003", "02920180004", "01614960005", "01414960006", "02890180007"}

func main() {
	log.SetFlags(0)
	loadTemplates()

	// A busy caller: 201 calls ordinary national numbers every 4 seconds for
	// 20 minutes from its usual address, 3 s each, with re-registrations.
	s := newScript()
	s.register(0, "SIP", "201", "192.0.2.10", 5060)
	for i := range 300 {
		sec := 2 + float64(i)*4
		s.call(sec, "SIP", "201", "", nationals[i%len(nationals)], 3)
		if i%30 == 29 {
			s.register(sec+1, "SIP", "201", "192.0.2.10", 5060)
		}
	}
	s.write("busy-caller")

	// A receptionist: 210 answers a stream of incoming calls (several up at
	// once) and makes attended transfers: an outgoing consult call while one is
	// on hold, so 2-3 calls of her own are up at a time.
	s = newScript()
	s.register(0, "SIP", "210", "192.0.2.20", 5060)
	for i := range 60 {
		sec := 1 + float64(i)*10
		s.incoming(sec, "210", "02079460100", 45)
		s.incoming(sec+2, "210", "02079460100", 30)
		if i%2 == 0 {
			s.call(sec+5, "SIP", "210", "", "2"+fmt.Sprint(11+i%5), 20) // consult call to a colleague
			s.call(sec+6, "SIP", "210", "", nationals[i%len(nationals)], 15)
		}
	}
	s.write("receptionist")

	// A softphone (PJSIP 301) that now and then dials a + number from its
	// contacts between national calls, and one number in two formats.
	s = newScript()
	s.register(0, "PJSIP", "301", "198.51.100.7", 5062)
	for i := range 40 {
		sec := 5 + float64(i)*45
		num := nationals[i%len(nationals)]
		if i%5 == 0 {
			num = "+4420794601" + fmt.Sprintf("%02d", i)
		}
		s.call(sec, "PJSIP", "301", "198.51.100.7", num, 60)
	}
	s.call(2000, "PJSIP", "301", "198.51.100.7", "02079460123", 30)
	s.call(2100, "PJSIP", "301", "198.51.100.7", "+442079460123", 30)
	s.write("softphone")

	// Click-to-dial through Local channels: the number is only in the
	// DialBegin of the ;2 half, tied back to the ;1 half by Linkedid. A burst
	// of such calls to one number behind several prefixes is still a hunt.
	s = newScript()
	for i, num := range []string{"0011442079460000", "00442079460000", "011442079460000", "+442079460000"} {
		s.originateLocal(1+float64(i)*0.3, "220", num, 5)
	}
	s.write("local-originate")

	// new_source: 202 registers from its office, then a second address
	// authenticates as 202 an hour later.
	s = newScript()
	s.register(0, "SIP", "202", "192.0.2.30", 5060)
	s.register(600, "SIP", "202", "192.0.2.30", 5060)
	s.register(3000, "SIP", "202", "203.0.113.66", 5070)
	s.write("new-source")

	// chan_sip reuses SessionID memory addresses for unrelated requests: five
	// failures under one SessionID are five failures. PJSIP repeats events of
	// one request under its Call-ID: eight events of four requests are four.
	s = newScript()
	for i := range 5 {
		s.authFail(1+float64(i)*0.5, "SIP", "InvalidPassword", fmt.Sprint(100+i), "203.0.113.5", "0x7fa2b4051c20")
	}
	for i := range 4 {
		sess := fmt.Sprintf("%d-777@203.0.113.6", i+1)
		s.authFail(10+float64(i)*0.5, "PJSIP", "ChallengeResponseFailed", "300", "203.0.113.6", sess)
		s.authFail(10+float64(i)*0.5+0.001, "PJSIP", "ChallengeResponseFailed", "<unknown>", "203.0.113.6", sess)
	}
	s.write("auth-dedupe")

	// The receptionist on Asterisk 11, where no Linkedid tells a call from
	// a leg: the carrier's incoming calls (several up at once) are the
	// carrier's, never 210's, whose own calls are her consults and national
	// calls. 210's registration (PeerStatus) is all the AMI shows of it.
	s = newScript11()
	s.register11(0, "210", "192.0.2.20", 5060)
	for i := range 60 {
		sec := 1 + float64(i)*10
		s.incoming11(sec, "210", "02079460100", 45)
		s.incoming11(sec+2, "210", "02079460100", 30)
		if i%2 == 0 {
			s.call11(sec+5, "210", "2"+fmt.Sprint(11+i%5), 20)
			s.call11(sec+6, "210", nationals[i%len(nationals)], 15)
		}
	}
	s.write("asterisk11-receptionist")
}
