package hangup

import (
	"bytes"
	"errors"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/astguard/astguard/internal/ami"
)

// transcripts holds the repository's recorded AMI streams.
const transcripts = "../../../testdata/transcripts/"

// FuzzChannelRegex checks the Hangup /regex/ the guard builds for an
// extension: for a name ValidName accepts it compiles as POSIX ERE (what
// Asterisk's regcomp gets), matches every channel Asterisk names for that
// extension and nothing ParseChannel would attribute to another one; for any
// other name there is no regex.
func FuzzChannelRegex(f *testing.F) {
	// The channel names of the fixtures, and hostile ones.
	for _, name := range []string{"attack-mixed.ami", "after-rotation.ami", "hangup-events.ami", "pjsip-bruteforce.ami"} {
		data, err := os.ReadFile(transcripts + name)
		if err != nil {
			f.Fatal(err)
		}
		seen := map[string]bool{}
		tr := ami.NewTranscript(bytes.NewReader(data))
		if _, err := tr.Banner(); err != nil {
			f.Fatal(err)
		}
		var m ami.Message
		for {
			_, _, err := tr.Next(&m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				f.Fatal(err)
			}
			for _, ch := range []string{m.Get("Channel"), m.Get("DestChannel")} {
				if cn, ok := ami.ParseChannel(ch); ok && !seen[ch] {
					seen[ch] = true
					f.Add(uint8(cn.Tech), cn.Name, ch, "201")
				}
			}
		}
	}
	for _, s := range []string{"a.b*c", "x|y", "(.*)", "$(reboot)", ";rm -rf /", "`id`", "\xff\xfe", "a\r\nb", "a-0000000a",
		"+*#@~_-.", "[0-9]", `\`, "^", "a{8}", "office-200", strings.Repeat("9", ami.MaxNameLen), strings.Repeat("9", ami.MaxNameLen+1)} {
		f.Add(uint8(ami.TechSIP), s, "SIP/"+s+"-0000000a", "a")
		f.Add(uint8(ami.TechIAX2), s, "IAX2/"+s+"-12", "a-1")
	}
	f.Fuzz(func(t *testing.T, tech uint8, name, channel, other string) {
		tc := ami.Tech(tech % 6)
		re, ok := ChannelRegex(tc, name)
		wantOK := ami.ValidName(name) && (tc == ami.TechSIP || tc == ami.TechPJSIP || tc == ami.TechIAX2)
		if ok != wantOK {
			t.Fatalf("ChannelRegex(%v, %q) ok = %v, want %v", tc, name, ok, wantOK)
		}
		if !ok {
			if re != "" {
				t.Fatalf("ChannelRegex(%v, %q) refused but returned %q", tc, name, re)
			}
			return
		}
		if len(re) < 2 || re[0] != '/' || re[len(re)-1] != '/' || strings.ContainsAny(re, "\r\n\x00") {
			t.Fatalf("ChannelRegex(%v, %q) = %q: not a /regex/ value", tc, name, re)
		}
		// Asterisk compiles it with regcomp(REG_EXTENDED): it must be
		// POSIX ERE. Without REG_NEWLINE, ^ and $ anchor at the ends of
		// the string only, which is Go's default (OneLine) matching;
		// CompilePOSIX's ^ and $ also match around a newline, so its
		// matches are compared on strings without one.
		posix, err := regexp.CompilePOSIX(re[1 : len(re)-1])
		if err != nil {
			t.Fatalf("ChannelRegex(%v, %q) = %q does not compile as POSIX ERE: %v", tc, name, re, err)
		}
		rx, err := regexp.Compile(re[1 : len(re)-1])
		if err != nil {
			t.Fatalf("ChannelRegex(%v, %q) = %q does not compile: %v", tc, name, re, err)
		}
		// The extension's channels, as Asterisk names them, match.
		suffixes := []string{"-00000000", "-0000001a", "-ffffffff"}
		if tc == ami.TechIAX2 {
			suffixes = []string{"-1", "-16383", "-0"}
		}
		for _, sfx := range suffixes {
			if ch := tc.String() + "/" + name + sfx; !rx.MatchString(ch) || !posix.MatchString(ch) {
				t.Fatalf("%s does not match %q", re, ch)
			}
		}
		// Anything it matches is a channel of this extension and no other.
		for _, ch := range []string{channel, tc.String() + "/" + other + suffixes[1], tc.String() + "/" + name + "-" + other,
			tc.String() + "/" + name + suffixes[1] + other, "Local/" + name + "@ctx" + suffixes[1] + ";1"} {
			if !strings.Contains(ch, "\n") && posix.MatchString(ch) != rx.MatchString(ch) {
				t.Fatalf("%s: POSIX and whole-string matching differ on %q", re, ch)
			}
			if !rx.MatchString(ch) {
				continue
			}
			cn, ok := ami.ParseChannel(ch)
			if !ok || cn.Tech != tc || cn.Name != name {
				t.Fatalf("%s matches %q, a channel of %+v (ok %v), not of %s/%s", re, ch, cn, ok, tc, name)
			}
		}
	})
}
