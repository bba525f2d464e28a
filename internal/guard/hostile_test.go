package guard

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/action/hangup"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
)

// frame joins header lines into an AMI frame.
func frame(lines ...string) string { return strings.Join(lines, "\r\n") + "\r\n" }

func newchannelFrame(channel, uid, exten, callerID string) string {
	return frame("Event: Newchannel", "Privilege: call,all", "Channel: "+channel, "ChannelState: 0", "ChannelStateDesc: Down",
		"CallerIDNum: "+callerID, "CallerIDName: "+callerID, "ConnectedLineNum: <unknown>", "ConnectedLineName: <unknown>",
		"Language: en", "AccountCode: ", "Context: from-internal", "Exten: "+exten, "Priority: 1", "Uniqueid: "+uid, "Linkedid: "+uid)
}

func hangupFrame(channel, uid string) string {
	return frame("Event: Hangup", "Privilege: call,all", "Channel: "+channel, "ChannelState: 6", "ChannelStateDesc: Up",
		"CallerIDNum: 200", "CallerIDName: x", "Context: from-internal", "Exten: 0011442079460000", "Priority: 2",
		"Uniqueid: "+uid, "Linkedid: "+uid, "Cause: 1", "Cause-txt: Unallocated (unassigned) number")
}

func securityFrame(event, service, account, remote string, extra ...string) string {
	lines := []string{"Event: " + event, "Privilege: security,all", "EventTV: 2026-11-25T12:47:00.034+0000", "Severity: Error",
		"Service: " + service, "EventVersion: 1", "AccountID: " + account, "SessionID: 0x7fa2b404e760",
		"LocalAddress: IPV4/UDP/127.0.0.1/5060", "RemoteAddress: " + remote}
	return frame(append(lines, extra...)...)
}

// The regex channelRegex builds, taken apart.
var hangupRegexRE = regexp.MustCompile(`^/\^(SIP|PJSIP|IAX2)\\/(.+)-(\[0-9a-f\]\{8\}|\[0-9\]\+)\$/$`)

// Hostile names, numbers, accounts and addresses, where an attacker
// controls them, injected as live events that trip critical alerts: the
// guard stays up, every action it sends is clean (no CR, LF or control
// character in any header), every Hangup regex is one it built from a
// ValidName name, every channel it names is one ParseChannel takes, every
// config action names a ValidName section, and only valid attacker
// addresses are blocked.
func TestHostileInputReachesNothingUnvalidated(t *testing.T) {
	t.Parallel()
	fw := &recordingFirewall{DryRun: firewall.NewDryRun(zerolog.Nop())}
	h := startGuardWith(t, "pjsip-bruteforce.ami", 0, func(c *config.Config) {
		// Hostile names never authenticate: let their calls go critical
		// so that they reach the responder.
		c.Detection.UnauthenticatedCritical = true
	}, fw)
	blocked := func(*harness) []netip.Addr {
		b, _ := fw.Blocked(context.Background())
		return addrsOf(b)
	}
	waitFor(t, "both sessions to log in", 10*time.Second, func() bool { return h.srv.Sessions() == 2 })
	select {
	case <-h.srv.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("transcript not streamed")
	}

	// Channel names an attacker shapes (a chan_sip guest or a peer name
	// from the From header), with regex, shell and control characters.
	long := strings.Repeat("9", ami.MaxNameLen+20)
	channels := []string{
		"SIP/a.b*c-0000000a", // valid, with regex metacharacters: hung up by an escaped regex
		"SIP/x|y-0000000b",
		"SIP/(.*)-0000000c",
		"SIP/$(reboot)-0000000d",
		"SIP/;rm-rf/-0000000e",
		"SIP/`reboot`-0000000f",
		"SIP/\xff\xfe\x80-00000010",
		"PJSIP/$(id)|x-00000011",
		"SIP/20\r\n0-00000012", // CR LF: the line ends inside the name
		"SIP/20\r0-00000013",   // a lone CR
		"SIP/20\n0-00000014",   // a lone LF
		"SIP/a\x00b-00000015",  // NUL
		"SIP/a\x1bb-00000016",  // ESC
		"IAX2/^.*$-16",
		"Local/$(reboot)@ctx-00000017;1",
		"SIP/" + long + "-00000018",
	}
	numbers := []string{"0044$(reboot)", "+53;rm -rf /", "00\xff44", "0011442079460000\r\nChannel: SIP/999-000000ff",
		"`reboot`", "(.*)", "0044207946000\x00", "0053123456789"}
	owner := func(ch string) string {
		name := strings.SplitN(ch, "/", 2)[1]
		return name[:max(0, len(name)-9)]
	}
	for i, ch := range channels {
		// A challenge first, as chan_sip sends for every INVITE: it tells
		// the fake Asterisk where the calls come from (Getvar).
		h.srv.Inject(securityFrame("ChallengeSent", "SIP", "sip:"+owner(ch)+"@192.0.2.254",
			fmt.Sprintf("IPV4/UDP/203.0.113.%d/5060", 10+i), "Challenge: 2e5503cf"))
		for j := range 6 {
			uid := fmt.Sprintf("1795620%03d.%d", i, j)
			h.srv.Inject(newchannelFrame(ch, uid, numbers[j%len(numbers)], "200"))
		}
	}
	// Caller ids of 8 and 30 KiB with a Channel header inside: read whole,
	// as one value, so the header inside never becomes one (a reader that
	// splits long lines would parse the tail as a header of its own).
	for j := range 6 {
		uid := fmt.Sprintf("1795621000.%d", j)
		size := []int{8 << 10, 30 << 10}[j%2]
		h.srv.Inject(newchannelFrame("SIP/202-0000000f", uid, "0011442079460000",
			strings.Repeat("A", size)+"Channel: SIP/666-0000abcd"))
	}
	// Password guessing with hostile accounts, and addresses that must
	// never become a rule.
	accounts := []string{"$(reboot)", ";rm -rf /", "`id`", "\xff\xfe", "a|b(.*)", "x\r\nRemoteAddress: IPV4/UDP/127.0.0.1/5060"}
	remotes := []string{
		"IPV4/UDP/203.0.113.66/5060",        // a real attacker
		"IPV6/UDP/::ffff:203.0.113.68/5060", // the same, IPv4-mapped
		"IPV4/UDP/0.0.0.0/5060",
		"IPV4/UDP/224.0.0.1/5060",
		"IPV4/UDP/255.255.255.255/5060",
		"IPV6/UDP/fe80::1%eth0/5060",
		"IPV6/UDP/::/5060",
		"IPV4/UDP/127.0.0.1/5060", // the AMI server
		"IPV4/UDP/203.0.113.67;reboot/5060",
		"IPV4/UDP/$(reboot)/5060",
		"IPV4/UDP/203.0.113.69\r\n/5060",
	}
	for _, remote := range remotes {
		for j := range 6 {
			h.srv.Inject(securityFrame("InvalidPassword", "SIP", accounts[j%len(accounts)], remote))
		}
	}
	for j := range 6 {
		h.srv.Inject(securityFrame("FailedACL", "SIP", numbers[j%len(numbers)], "IPV4/UDP/203.0.113.70/5060", "ACLName: no_extension_match"))
	}
	// Address hints with hostile names: never learned.
	h.srv.Inject(frame("Event: PeerStatus", "Privilege: system,all", "ChannelType: SIP", "Peer: SIP/$(reboot)",
		"PeerStatus: Registered", "Address: 203.0.113.80:5060"))
	h.srv.Inject(frame("Event: ContactStatus", "Privilege: system,all", "URI: sip:x@203.0.113.81:5060;ob",
		"ContactStatus: Reachable", "AOR: `id`", "EndpointName: `id`"))
	// And the hang-ups of the hostile calls.
	for i, ch := range channels {
		for j := range 6 {
			h.srv.Inject(hangupFrame(ch, fmt.Sprintf("1795620%03d.%d", i, j)))
		}
	}

	ip := netip.MustParseAddr
	waitFor(t, "the attacker blocked and a.b*c hung up", 20*time.Second, func() bool {
		b := blocked(h)
		return slices.Contains(b, ip("203.0.113.66")) && slices.Contains(b, ip("203.0.113.68")) &&
			slices.ContainsFunc(strings.Split(h.logs.String(), "\n"), func(l string) bool {
				return strings.Contains(l, `"action":"hangup"`) && strings.Contains(l, `"result":"done"`) && strings.Contains(l, `"extension":"a.b*c"`)
			})
	})
	waitFor(t, "the calls with long caller ids hung up", 20*time.Second, func() bool {
		return slices.Contains(hangupsSent(h.srv), `/^SIP\/202-[0-9a-f]{8}$/`)
	})
	h.stop(t)

	// The actions.
	var regexes []string
	for _, a := range h.srv.Actions() {
		for _, hd := range a.Headers {
			k, v := hd[0], hd[1]
			if strings.ContainsFunc(k+v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Errorf("%s carries a control character: %q: %q", a.Name, k, v)
			}
			switch {
			case strings.EqualFold(k, "Channel") && strings.HasPrefix(v, "/"):
				m := hangupRegexRE.FindStringSubmatch(v)
				if a.Name != "Hangup" || m == nil {
					t.Errorf("%s with regex %q", a.Name, v)
					continue
				}
				tech, _ := ami.ParseTech(m[1])
				name := strings.NewReplacer(`\.`, ".", `\+`, "+", `\*`, "*").Replace(m[2])
				if want, ok := hangup.ChannelRegex(tech, name); !ok || want != v || !ami.ValidName(name) {
					t.Errorf("Hangup regex %q is not one the guard builds (for %q: %q, %v)", v, name, want, ok)
				}
				regexes = append(regexes, v)
			case strings.EqualFold(k, "Channel"):
				if _, ok := ami.ParseChannel(v); !ok {
					t.Errorf("%s names channel %q, which ParseChannel rejects", a.Name, v)
				}
			case strings.EqualFold(k, "Category") || strings.HasPrefix(k, "Cat-"):
				if !ami.ValidName(v) {
					t.Errorf("%s names config section %q, not a valid name", a.Name, v)
				}
			}
			if strings.Contains(v, "SIP/666-") {
				t.Errorf("%s acted on the channel hidden in an over-long caller id: %q: %q", a.Name, k, v)
			}
		}
	}
	if !slices.Contains(regexes, `/^SIP\/a\.b\*c-[0-9a-f]{8}$/`) {
		t.Errorf("no escaped Hangup regex for a.b*c among %q", regexes)
	}

	// The firewall: valid attacker addresses only, never the AMI server,
	// nor an address that is no single host's (unspecified, multicast, the
	// limited broadcast, link-local: a rule without its interface would
	// cut the address off every link).
	attackers := map[netip.Addr]bool{ip("203.0.113.66"): true, ip("203.0.113.68"): true, ip("203.0.113.70"): true, ip("127.0.0.6"): true}
	for i := range channels {
		attackers[netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)})] = true
	}
	for _, a := range blocked(h) {
		if n, err := firewall.NormalizeAddr(a); err != nil || n != a || !attackers[a] {
			t.Errorf("blocked %v (normalized %v, %v), not an attacker's address", a, n, err)
		}
	}
	// What reaches a rule: the address as normalized and the comment as
	// sanitized, printable ASCII without quotes or backslashes.
	for _, b := range fw.calls() {
		if _, err := firewall.NormalizeAddr(b.addr); err != nil {
			continue // refused by the firewall
		}
		c := firewall.SanitizeComment(b.comment)
		if strings.ContainsFunc(c, func(r rune) bool { return r < 0x20 || r > 0x7e || strings.ContainsRune("\"'`\\", r) }) {
			t.Errorf("rule for %v would carry comment %q", b.addr, c)
		}
	}
	// The calls with the long caller ids were seen, as 202's.
	if !slices.Contains(regexes, `/^SIP\/202-[0-9a-f]{8}$/`) {
		t.Errorf("the calls with long caller ids were not acted on: regexes %q", regexes)
	}
}

type blockCall struct {
	addr    netip.Addr
	comment string
}

// recordingFirewall is a dry-run firewall that remembers every Block it was
// asked for, refused ones included.
type recordingFirewall struct {
	*firewall.DryRun
	mu     sync.Mutex
	blocks []blockCall
}

func (f *recordingFirewall) Block(ctx context.Context, entries ...firewall.Entry) error {
	f.mu.Lock()
	for _, e := range entries {
		f.blocks = append(f.blocks, blockCall{e.Prefix.Addr(), e.Comment})
	}
	f.mu.Unlock()
	return f.DryRun.Block(ctx, entries...)
}

func (f *recordingFirewall) calls() []blockCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.blocks)
}
