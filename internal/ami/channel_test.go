package ami

import (
	"bytes"
	"errors"
	"regexp"
	"strings"
	"testing"
)

// channelSink keeps ParseChannel's result in use in the allocation test.
var channelSink ChannelName

func TestParseChannel(t *testing.T) {
	good := []struct {
		in   string
		want ChannelName
	}{
		{"SIP/200-0000000d", ChannelName{Tech: TechSIP, Name: "200"}},
		{"SIP/office-200-0000001a", ChannelName{Tech: TechSIP, Name: "office-200"}},
		{"SIP/carrier-00000008", ChannelName{Tech: TechSIP, Name: "carrier"}},
		{"SIP/a-b-c-deadbeef", ChannelName{Tech: TechSIP, Name: "a-b-c"}},
		{"SIP/127.0.0.2-00000001", ChannelName{Tech: TechSIP, Name: "127.0.0.2"}},
		{"PJSIP/300-00000001", ChannelName{Tech: TechPJSIP, Name: "300"}},
		{"PJSIP/anonymous-0000002f", ChannelName{Tech: TechPJSIP, Name: "anonymous"}},
		{"IAX2/trunk-1234", ChannelName{Tech: TechIAX2, Name: "trunk"}},
		{"IAX2/my-trunk-7", ChannelName{Tech: TechIAX2, Name: "my-trunk"}},
		{"Local/200@from-internal-00000001;1", ChannelName{Tech: TechLocal, Name: "200", Context: "from-internal", Half: 1}},
		{"Local/200@from-internal-00000001;2", ChannelName{Tech: TechLocal, Name: "200", Context: "from-internal", Half: 2}},
		{"Local/a@b@ctx-0000abcd;1", ChannelName{Tech: TechLocal, Name: "a@b", Context: "ctx", Half: 1}},
	}
	for _, tt := range good {
		got, ok := ParseChannel(tt.in)
		if !ok || got != tt.want {
			t.Errorf("ParseChannel(%q) = %+v, %v; want %+v", tt.in, got, ok, tt.want)
		}
	}
	bad := []string{
		"", "SIP", "SIP/", "SIP/200", "SIP/-0000000d", "SIP/200-0000000", "SIP/200-0000000D",
		"SIP/200-0000000g", "SIP/200_0000000d", "SIP/200-0000000d;1", "SIP/200-0000000d ",
		"SIP/2\r\n00-0000000d", "SIP/2 00-0000000d", "SIP/2\t00-0000000d", "SIP/2\x0000-0000000d",
		"SIP/2\x7f00-0000000d", "sip/200-0000000d", "Sip/200-0000000d", "PJSIP/300", "PJSIP/-00000001",
		"IAX2/trunk", "IAX2/trunk-", "IAX2/-1234", "IAX2/trunk-12a4", "IAX2/trunk-1234\n",
		"Local/200@from-internal-00000001", "Local/200@from-internal-00000001;3",
		"Local/200-00000001;1", "Local/@ctx-00000001;1", "Local/200@-00000001;1",
		"Local/2 0@ctx-00000001;1", "DAHDI/1-1", "Console/dsp", "Message/ast_msg_queue",
		"SIP/200-0000000d\r\nChannel: SIP/evil-00000001",
	}
	for _, s := range bad {
		if got, ok := ParseChannel(s); ok {
			t.Errorf("ParseChannel(%q) = %+v, true; want false", s, got)
		}
	}
	if n := testing.AllocsPerRun(100, func() { channelSink, _ = ParseChannel("Local/200@from-internal-00000001;1") }); n != 0 {
		t.Errorf("ParseChannel allocates %v times", n)
	}
}

func TestTech(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Tech
		ok   bool
	}{
		{"SIP", TechSIP, true}, {"sip", TechSIP, true}, {"PJSIP", TechPJSIP, true}, {"pjsip", TechPJSIP, true},
		{"IAX2", TechIAX2, true}, {"iax2", TechIAX2, true}, {"Local", TechLocal, true}, {"LOCAL", TechLocal, true},
		{"AMI", TechUnknown, false}, {"", TechUnknown, false}, {"Unknown", TechUnknown, false}, {"SIPS", TechUnknown, false},
	} {
		got, ok := ParseTech(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseTech(%q) = %v, %v", tt.in, got, ok)
		}
		if ok && !strings.EqualFold(got.String(), tt.in) {
			t.Errorf("%v.String() = %q", got, got.String())
		}
	}
	if TechUnknown.String() != "Unknown" || Tech(99).String() != "Tech(?)" || TechPJSIP.String() != "PJSIP" {
		t.Error("Tech.String")
	}
}

func TestValidName(t *testing.T) {
	for _, s := range []string{"200", "office-200", "carrier", "john.doe", "a_b", "+442079460000", "*97", "#", "user@example", "~x",
		strings.Repeat("a", MaxNameLen)} {
		if !ValidName(s) {
			t.Errorf("ValidName(%q) = false", s)
		}
	}
	for _, s := range []string{"", " ", "2 00", "200\r\n", "200\n", "a/b", "a;b", "a,b", "a|b", "[200]", "a$b", "a\"b", "a'b",
		"a\\b", "a{b}", "a(b)", "a:b", "a=b", "é", "a\x00", "a\x7f", "a\tb", strings.Repeat("a", MaxNameLen+1)} {
		if ValidName(s) {
			t.Errorf("ValidName(%q) = true", s)
		}
	}
}

// The reference for ParseChannel: the regular expressions of the AMI
// reference, plus the name checks ParseChannel documents.
var (
	reSIP  = regexp.MustCompile(`^(SIP|PJSIP)/(.+)-[0-9a-f]{8}$`)
	reIAX2 = regexp.MustCompile(`^IAX2/(.+)-[0-9]+$`)
	// The context is what follows the last @ (ParseChannel's rule).
	reLocal = regexp.MustCompile(`^Local/(.+)@([^@]*)-[0-9a-f]{8};([12])$`)
)

func refParseChannel(s string) (ChannelName, bool) {
	var c ChannelName
	if m := reSIP.FindStringSubmatch(s); m != nil {
		c.Tech, _ = ParseTech(m[1])
		c.Name = m[2]
	} else if m := reIAX2.FindStringSubmatch(s); m != nil {
		c.Tech, c.Name = TechIAX2, m[1]
	} else if m := reLocal.FindStringSubmatch(s); m != nil {
		c.Tech, c.Name, c.Context, c.Half = TechLocal, m[1], m[2], m[3][0]-'0'
	} else {
		return ChannelName{}, false
	}
	if !channelPart(c.Name) || (c.Tech == TechLocal && !channelPart(c.Context)) {
		return ChannelName{}, false
	}
	return c, true
}

func TestParseChannelMatchesRegexp(t *testing.T) {
	for _, s := range []string{"SIP/200-0000000d", "SIP/a-b-00000000", "IAX2/x-1-2", "Local/a@b-c@d-00000001;2",
		"Local/x@y-00000001;1", "Local/0@@-00000000;1", "PJSIP/\xff-00000001", "SIP/200-0000000d-0000000e"} {
		got, ok := ParseChannel(s)
		want, wok := refParseChannel(s)
		if got != want || ok != wok {
			t.Errorf("ParseChannel(%q) = %+v, %v; regexp says %+v, %v", s, got, ok, want, wok)
		}
	}
}

func FuzzParseChannel(f *testing.F) {
	for _, s := range []string{"SIP/200-0000000d", "SIP/office-200-0000001a", "PJSIP/300-00000001", "IAX2/trunk-1234",
		"Local/200@from-internal-00000001;1", "Local/200@from-internal-00000001;2", "SIP/2\r\n00-0000000d", "SIP/-0000000d",
		"SIP/a.b*c-0000000a", "SIP/x|y-0000000b", "SIP/(.*)-0000000c", "SIP/$(reboot)-0000000d", "SIP/`id`-0000000e",
		"PJSIP/\xff\xfe-0000000f"} {
		f.Add(s)
	}
	// Every channel name of the fixtures.
	seen := map[string]bool{}
	for _, name := range []string{"attack-mixed.ami", "after-rotation.ami", "hangup-events.ami", "pjsip-bruteforce.ami"} {
		r := NewReader(bytes.NewReader(readFixture(f, name)), ReaderOptions{})
		var m Message
		for {
			err := r.Next(&m)
			if err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrOversized) {
				break
			}
			for _, k := range []string{"Channel", "DestChannel", "Destination", "Peer"} {
				if v := m.Get(k); err == nil && v != "" && !seen[v] {
					seen[v] = true
					f.Add(v)
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := ParseChannel(s)
		want, wok := refParseChannel(s)
		if got != want || ok != wok {
			t.Fatalf("ParseChannel(%q) = %+v, %v; regexp says %+v, %v", s, got, ok, want, wok)
		}
		if ok && ValidName(got.Name) && strings.ContainsAny(got.Name, "\r\n /") {
			t.Fatalf("ValidName accepted %q", got.Name)
		}
		// A channel the guard may put into an action carries no control
		// character (CR and LF included) and is one ParseChannel takes.
		if ValidChannel(s) && (!ok || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })) {
			t.Fatalf("ValidChannel accepted %q", s)
		}
	})
}
