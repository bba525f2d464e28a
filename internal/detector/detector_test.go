package detector_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// feed is a tiny driver for typed events at chosen times.
type feed struct {
	d          *detector.Detector
	seq        int
	uid        int
	alerts     []detector.Alert
	registered map[string]bool
}

func newFeed(cfg detector.Config) *feed {
	return &feed{d: detector.New(cfg), registered: map[string]bool{}}
}

func (f *feed) send(at time.Duration, ev ami.Event) {
	f.seq++
	ev.Seq, ev.Time = f.seq, t0.Add(at)
	f.alerts = f.d.Process(&ev, f.alerts)
}

// call starts a call of SIP/ext to number from a registered phone: the
// first call registers the extension (its REGISTER's SuccessfulAuth with
// the password), and each INVITE is challenged first, as chan_sip does. It
// returns the Uniqueid.
func (f *feed) call(at time.Duration, ext, number string) string {
	if !f.registered[ext] {
		f.registered[ext] = true
		f.register(at, ext, "192.0.2.200")
	}
	f.challenge(at, ext, "192.0.2.200")
	return f.trunkCall(at, ext, number)
}

// register is the SuccessfulAuth of SIP/ext's REGISTER from ip, with the
// password.
func (f *feed) register(at time.Duration, ext, ip string) {
	f.send(at, ami.Event{Kind: ami.KindSecurity, Security: ami.SecSuccessfulAuth, Service: "SIP",
		AccountID: ext, RemoteAddr: netip.MustParseAddr(ip), RemotePort: 5060, UsingPassword: true})
}

// challenge is chan_sip's ChallengeSent for an INVITE from ip whose From
// user is ext.
func (f *feed) challenge(at time.Duration, ext, ip string) {
	f.send(at, ami.Event{Kind: ami.KindSecurity, Security: ami.SecChallengeSent, Service: "SIP",
		AccountID: "sip:" + ext + "@192.0.2.254", RemoteAddr: netip.MustParseAddr(ip), RemotePort: 5060})
}

// trunkCall starts a call of SIP/ext with no authentication, as a trunk's
// (or an IP-authenticated peer's) incoming call.
func (f *feed) trunkCall(at time.Duration, ext, number string) string {
	f.uid++
	uid := fmt.Sprintf("1795610000.%d", f.uid)
	f.send(at, ami.Event{Kind: ami.KindNewchannel, Channel: fmt.Sprintf("SIP/%s-%08x", ext, f.uid),
		Uniqueid: uid, Linkedid: uid, Exten: number})
	return uid
}

func (f *feed) hangup(at time.Duration, ext, uid string, cause int) {
	f.send(at, ami.Event{Kind: ami.KindHangup, Channel: "SIP/" + ext + "-00000001", Uniqueid: uid, Linkedid: uid, Cause: cause})
}

func (f *feed) authFail(at time.Duration, ip, account string) {
	f.send(at, ami.Event{Kind: ami.KindSecurity, Security: ami.SecInvalidPassword, Service: "SIP",
		AccountID: account, SessionID: "0x1", RemoteAddr: netip.MustParseAddr(ip), RemotePort: 5060})
}

func (f *feed) count(rule detector.Rule, sev detector.Severity) int {
	n := 0
	for _, a := range f.alerts {
		if a.Rule == rule && a.Severity == sev {
			n++
		}
	}
	return n
}

func TestCallRateOneCriticalPerCooldown(t *testing.T) {
	f := newFeed(detector.Default())
	for i := range 40 { // 10 calls/s for 4 s
		f.call(time.Duration(i)*100*time.Millisecond, "200", "02079460123")
	}
	if n := f.count(detector.RuleCallRate, detector.Critical); n != 1 {
		t.Fatalf("%d critical call_rate alerts, want 1 per cool-down", n)
	}
	// After the cool-down the same burst alerts again.
	for i := range 10 {
		f.call(6*time.Minute+time.Duration(i)*100*time.Millisecond, "200", "02079460123")
	}
	if n := f.count(detector.RuleCallRate, detector.Critical); n != 2 {
		t.Fatalf("%d critical call_rate alerts after the cool-down, want 2", n)
	}
}

func TestConcurrentCountsLiveOriginatedCalls(t *testing.T) {
	cfg := detector.Default()
	cfg.CallRateBurst = detector.Threshold{} // isolate the rule
	f := newFeed(cfg)
	var uids []string
	for i := range 7 {
		uids = append(uids, f.call(time.Duration(i)*10*time.Second, "210", "02079460123"))
	}
	if n := f.count(detector.RuleConcurrent, detector.Critical); n != 0 {
		t.Fatalf("critical at 7 live calls")
	}
	if got := len(f.d.LiveChannels(ami.TechSIP, "210", nil)); got != 7 {
		t.Fatalf("LiveChannels = %d, want 7", got)
	}
	for _, u := range uids {
		f.hangup(2*time.Minute, "210", u, 16)
	}
	if got := len(f.d.LiveChannels(ami.TechSIP, "210", nil)); got != 0 {
		t.Fatalf("LiveChannels after hang-ups = %d, want 0", got)
	}
	for i := range 8 {
		f.call(3*time.Minute+time.Duration(i)*10*time.Second, "210", "02079460123")
	}
	if n := f.count(detector.RuleConcurrent, detector.Critical); n != 1 {
		t.Fatalf("%d critical concurrent alerts at 8 live calls, want 1", n)
	}
}

func TestFailedProbesFromHangupCauses(t *testing.T) {
	f := newFeed(detector.Default())
	for i, cause := range []int{1, 3, 28, 16, 1, 1} {
		at := time.Duration(i) * 5 * time.Second
		uid := f.call(at, "205", fmt.Sprintf("0044207946%04d", i))
		f.hangup(at+time.Second, "205", uid, cause)
	}
	if n := f.count(detector.RuleFailedProbes, detector.Critical); n != 1 {
		t.Fatalf("%d critical failed_probes, want 1 (5 unroutable of 6)", n)
	}
}

func TestInternationalHighRiskAndOutsideLine(t *testing.T) {
	cfg := detector.Default()
	cfg.OutsideLine = "9"
	f := newFeed(cfg)
	// 9 + 00 + 53 (Cuba): three calls a few minutes apart.
	for i := range 3 {
		f.call(time.Duration(i)*3*time.Minute, "206", "900537123456")
	}
	a := f.alerts
	if f.count(detector.RuleInternational, detector.Critical) != 1 {
		t.Fatalf("want one critical international alert for 3 high-risk calls, got %v", a)
	}
	if a[len(a)-1].Numbers[0] != "900537123456" {
		t.Errorf("numbers = %v", a[len(a)-1].Numbers)
	}
	// National numbers starting with 9 are not international.
	g := newFeed(cfg)
	for i := range 30 {
		uid := g.call(time.Duration(i)*20*time.Second, "207", "902079460123")
		g.hangup(time.Duration(i)*20*time.Second+15*time.Second, "207", uid, 16)
	}
	if len(g.alerts) != 0 {
		t.Errorf("national calls raised %v", g.alerts)
	}
}

func TestAllowLists(t *testing.T) {
	cfg := detector.Default()
	cfg.AllowExtensions = []string{"carrier", "PJSIP/trunk"}
	cfg.AllowNetworks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	cfg.AllowDestinations = []string{"112"}
	f := newFeed(cfg)
	for i := range 20 {
		at := time.Duration(i) * 50 * time.Millisecond
		f.call(at, "carrier", "02079460123")
		f.call(at, "208", "112")
		f.authFail(at, "10.1.2.3", "200")
	}
	if len(f.alerts) != 0 {
		t.Fatalf("allow-listed traffic raised %v", f.alerts)
	}
	// The same traffic from others is caught.
	for i := range 20 {
		at := time.Second + time.Duration(i)*50*time.Millisecond
		f.call(at, "209", "02079460123")
		f.authFail(at, "192.0.2.1", "200")
	}
	if f.count(detector.RuleCallRate, detector.Critical) != 1 || f.count(detector.RuleAuthFailures, detector.Critical) != 1 {
		t.Fatalf("want a call_rate and an auth_failures critical, got %v", f.alerts)
	}
}

// An attacker flooding from many addresses cannot grow the state past the
// caps, and cannot push out a key whose incident is in progress.
func TestBoundedStateKeepsIncidents(t *testing.T) {
	cfg := detector.Default()
	cfg.MaxAddresses = 100
	cfg.MaxExtensions = 10
	f := newFeed(cfg)
	for i := range 5 { // a real attack first: an incident in progress
		f.authFail(time.Duration(i)*time.Millisecond, "198.51.100.1", "200")
	}
	for i := range 20 {
		f.call(time.Duration(i)*50*time.Millisecond, "200", "0044207946000"+fmt.Sprint(i%10))
	}
	if f.count(detector.RuleAuthFailures, detector.Critical) != 1 || f.count(detector.RuleCallRate, detector.Critical) != 1 {
		t.Fatalf("setup: %v", f.alerts)
	}
	// 20,000 distinct attacking addresses, and 2,000 distinct extension
	// names placing calls: 200 times the caps, so that after the first
	// hundred events every new key evicts one. The caps hold after every
	// event.
	for i := range 20_000 {
		at := time.Second + time.Duration(i)*time.Microsecond
		ip := netip.AddrFrom4([4]byte{203, byte(i >> 16), byte(i >> 8), byte(i)})
		f.send(at, ami.Event{Kind: ami.KindSecurity, Security: ami.SecInvalidPassword, Service: "SIP",
			AccountID: "admin", SessionID: "0x1", RemoteAddr: ip, RemotePort: 5060})
		if i%10 == 0 {
			f.call(at, fmt.Sprintf("x%d", i/10), "")
		}
		if st := f.d.Stats(); st.Addresses > 100 || st.Extensions > 10 {
			t.Fatalf("state grew past the caps after %d addresses: %+v", i+1, st)
		}
	}
	st := f.d.Stats()
	if st.Evicted < 20_000+2_000-100-10 {
		t.Fatalf("new keys did not evict old ones: %+v", st)
	}
	// The incident keys survived: their live calls and sources are still known.
	if n := len(f.d.LiveChannels(ami.TechSIP, "200", nil)); n != 20 {
		t.Errorf("SIP/200 lost its live calls under the flood: %d", n)
	}
	// And the attacker's address keeps counting inside the same incident:
	// after the cool-down it alerts again.
	for i := range 5 {
		f.authFail(6*time.Minute+time.Duration(i)*time.Millisecond, "198.51.100.1", "200")
	}
	if f.count(detector.RuleAuthFailures, detector.Critical) != 2 {
		t.Errorf("attacker's state lost under the flood")
	}
}

func TestIdleKeysExpire(t *testing.T) {
	f := newFeed(detector.Default())
	for i := range 50 {
		f.authFail(0, fmt.Sprintf("192.0.2.%d", i), "200")
	}
	if st := f.d.Stats(); st.Addresses != 50 {
		t.Fatalf("addresses = %d", st.Addresses)
	}
	f.authFail(2*time.Hour, "198.51.100.9", "200")
	if st := f.d.Stats(); st.Addresses != 1 || st.Expired != 50 {
		t.Fatalf("after idle_expiry: %+v", st)
	}
}

func TestNewSourceLearnsFirstAddress(t *testing.T) {
	f := newFeed(detector.Default())
	auth := func(at time.Duration, ip string) {
		f.send(at, ami.Event{Kind: ami.KindSecurity, Security: ami.SecSuccessfulAuth, Service: "PJSIP",
			AccountID: "300", RemoteAddr: netip.MustParseAddr(ip), RemotePort: 5060})
	}
	auth(0, "192.0.2.1")
	auth(time.Minute, "192.0.2.1")
	if len(f.alerts) != 0 {
		t.Fatalf("first address alerted: %v", f.alerts)
	}
	auth(2*time.Minute, "203.0.113.9")
	if len(f.alerts) != 1 || f.alerts[0].Rule != detector.RuleNewSource || f.alerts[0].Severity != detector.Warning {
		t.Fatalf("want one new_source warning, got %v", f.alerts)
	}
	if got := f.alerts[0].Sources; len(got) != 2 || got[0].String() != "203.0.113.9" {
		t.Errorf("sources = %v, want the new address first", got)
	}
	// AMI logins are not extensions.
	f.send(3*time.Minute, ami.Event{Kind: ami.KindSecurity, Security: ami.SecSuccessfulAuth, Service: "AMI",
		AccountID: "guard", RemoteAddr: netip.MustParseAddr("127.0.0.1")})
	if st := f.d.Stats(); st.Extensions != 1 {
		t.Errorf("extensions = %d, want 1", st.Extensions)
	}
}

func TestTimeNeverGoesBackwards(t *testing.T) {
	f := newFeed(detector.Default())
	// Five failures, the later ones stamped earlier (clock skew between
	// TimeReceived and EventTV): they still count in one window.
	for i := range 5 {
		f.authFail(time.Duration(-i)*time.Hour, "192.0.2.7", "200")
	}
	if f.count(detector.RuleAuthFailures, detector.Critical) != 1 {
		t.Fatalf("got %v", f.alerts)
	}
}

func TestUnauthenticatedCappedAtWarning(t *testing.T) {
	f := newFeed(detector.Default())
	for i := range 20 { // a busy inbound trunk: 20 calls in 2 s
		f.trunkCall(time.Duration(i)*100*time.Millisecond, "carrier", "02079460100")
	}
	if f.count(detector.RuleCallRate, detector.Critical) != 0 || f.count(detector.RuleCallRate, detector.Warning) != 2 {
		t.Fatalf("want a warning and a capped warning, got %v", f.alerts)
	}
	capped := 0
	for _, a := range f.alerts {
		if a.Note != "" {
			capped++
		}
	}
	if capped == 0 {
		t.Errorf("no alert says it was capped: %v", f.alerts)
	}
	cfg := detector.Default()
	cfg.UnauthenticatedCritical = true
	g := newFeed(cfg)
	for i := range 20 {
		g.trunkCall(time.Duration(i)*100*time.Millisecond, "carrier", "02079460100")
	}
	if g.count(detector.RuleCallRate, detector.Critical) != 1 {
		t.Fatalf("unauthenticated_critical: want a critical, got %v", g.alerts)
	}
}

// burst sends 20 incoming calls of the trunk SIP/carrier in 2 s, starting
// at at, and returns how many criticals and capped warnings they raised.
func (f *feed) burst(at time.Duration) (critical, capped int) {
	f.alerts = f.alerts[:0]
	for i := range 20 {
		f.trunkCall(at+time.Duration(i)*100*time.Millisecond, "carrier", "02079460100")
	}
	for _, a := range f.alerts {
		switch {
		case a.Severity == detector.Critical:
			critical++
		case a.Note != "":
			capped++
		}
	}
	return critical, capped
}

// Only what Asterisk establishes lifts the trunk cap. chan_sip names an
// INVITE's sender in ChallengeSent by its From user, which any caller
// chooses (a real Asterisk 20 with alwaysauthreject=yes challenged an
// INVITE from an outside address with From user "carrier" as
// `AccountID: sip:carrier@...`), and a peer matched by its address gets
// SuccessfulAuth with UsingPassword 0: neither proves anything.
func TestTrunkCapLiftedOnlyByPasswordOrRegistration(t *testing.T) {
	ip := netip.MustParseAddr
	tests := []struct {
		name  string
		proof []ami.Event
		lift  bool
	}{
		{"forged challenge from outside", []ami.Event{{Kind: ami.KindSecurity, Security: ami.SecChallengeSent, Service: "SIP",
			AccountID: "sip:carrier@192.0.2.254", SessionID: "0x7fa2b4035830", RemoteAddr: ip("203.0.113.50"), RemotePort: 5060}}, false},
		{"challenge by name", []ami.Event{{Kind: ami.KindSecurity, Security: ami.SecChallengeSent, Service: "SIP",
			AccountID: "carrier", RemoteAddr: ip("203.0.113.50"), RemotePort: 5060}}, false},
		{"matched by address", []ami.Event{{Kind: ami.KindSecurity, Security: ami.SecSuccessfulAuth, Service: "SIP",
			AccountID: "carrier", RemoteAddr: ip("192.0.2.9"), RemotePort: 5090, UsingPassword: false}}, false},
		{"reachable", []ami.Event{{Kind: ami.KindPeerStatus, Peer: "SIP/carrier", Status: "Reachable", Addr: ip("192.0.2.9"), Port: 5090}}, false},
		{"password", []ami.Event{{Kind: ami.KindSecurity, Security: ami.SecSuccessfulAuth, Service: "SIP",
			AccountID: "carrier", RemoteAddr: ip("192.0.2.9"), RemotePort: 5090, UsingPassword: true}}, true},
		{"registration", []ami.Event{{Kind: ami.KindPeerStatus, Peer: "SIP/carrier", Status: "Registered", Addr: ip("192.0.2.9"), Port: 5090}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFeed(detector.Default())
			// The proof before the first call, and again between calls.
			for _, ev := range tt.proof {
				f.send(0, ev)
			}
			f.trunkCall(time.Second, "carrier", "02079460100")
			for _, ev := range tt.proof {
				f.send(time.Second, ev)
			}
			critical, capped := f.burst(2 * time.Second)
			if tt.lift && (critical == 0 || capped != 0) {
				t.Errorf("%d criticals, %d capped warnings: want the cap lifted", critical, capped)
			}
			if !tt.lift && (critical != 0 || capped == 0) {
				t.Errorf("%d criticals, %d capped warnings: want every critical capped at warning", critical, capped)
			}
		})
	}
}

// A PeerStatus Address (chan_sip takes it from the client's Contact header
// with nat=no) and a ContactStatus URI are contacts, never sources; the
// sources are where Asterisk received the requests from.
func TestContactsApartFromSources(t *testing.T) {
	ip := netip.MustParseAddr
	f := newFeed(detector.Default())
	f.send(0, ami.Event{Kind: ami.KindPeerStatus, Peer: "SIP/200", Status: "Registered", Addr: ip("198.51.100.20"), Port: 5060})
	f.send(0, ami.Event{Kind: ami.KindContactStatus, Peer: "300", Status: "Reachable", Addr: ip("198.51.100.30"), Port: 5060})
	f.send(0, ami.Event{Kind: ami.KindSecurity, Security: ami.SecSuccessfulAuth, Service: "PJSIP",
		AccountID: "300", RemoteAddr: ip("203.0.113.30"), RemotePort: 5060, UsingPassword: true})
	for i := range 5 {
		at := time.Second + time.Duration(i)*100*time.Millisecond
		f.trunkCall(at, "200", "02079460123")
		f.uid++
		uid := fmt.Sprintf("1795610000.%d", f.uid)
		f.send(at, ami.Event{Kind: ami.KindNewchannel, Channel: fmt.Sprintf("PJSIP/300-%08x", f.uid), Uniqueid: uid, Linkedid: uid, Exten: "02079460123"})
	}
	got := map[string]detector.Alert{}
	for _, a := range f.alerts {
		if a.Rule == detector.RuleCallRate && a.Severity == detector.Critical {
			got[a.Tech.String()+"/"+a.Extension] = a
		}
	}
	if a, ok := got["SIP/200"]; !ok || len(a.Sources) != 0 || fmt.Sprint(a.Contacts) != "[198.51.100.20]" {
		t.Errorf("SIP/200 (registered, only a PeerStatus address): %+v, want no sources and contact 198.51.100.20", a)
	}
	if a, ok := got["PJSIP/300"]; !ok || fmt.Sprint(a.Sources) != "[203.0.113.30]" || fmt.Sprint(a.Contacts) != "[198.51.100.30]" {
		t.Errorf("PJSIP/300: %+v, want source 203.0.113.30 and contact 198.51.100.30", a)
	}
	if got := f.d.Sources(ami.TechSIP, "200"); len(got) != 0 {
		t.Errorf("Sources(SIP/200) = %v, want none", got)
	}
}

// New contacts raise no new_source and never push a source out; a new
// source does, whatever the contacts said.
func TestNewSourceIgnoresContacts(t *testing.T) {
	f := newFeed(detector.Default())
	f.register(0, "202", "192.0.2.30")
	for i := range 20 { // contacts from 20 addresses
		f.send(time.Duration(i)*time.Second, ami.Event{Kind: ami.KindPeerStatus, Peer: "SIP/202", Status: "Registered",
			Addr: netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), Port: 5060})
	}
	if len(f.alerts) != 0 {
		t.Fatalf("contacts raised %v", f.alerts)
	}
	if got := f.d.Sources(ami.TechSIP, "202"); fmt.Sprint(got) != "[192.0.2.30]" {
		t.Errorf("sources after a flood of contacts: %v", got)
	}
	f.register(time.Minute, "202", "203.0.113.66")
	if len(f.alerts) != 1 || f.alerts[0].Rule != detector.RuleNewSource || fmt.Sprint(f.alerts[0].Sources) != "[203.0.113.66 192.0.2.30]" {
		t.Fatalf("want one new_source naming 203.0.113.66 then 192.0.2.30, got %+v", f.alerts)
	}
	if c := f.alerts[0].Contacts; len(c) == 0 || c[0] != netip.AddrFrom4([4]byte{198, 51, 100, 19}) {
		t.Errorf("contacts of the alert = %v, want the newest (198.51.100.19) first", c)
	}
}

// An IPv6 attacker changes its address inside its /64 at will: its failed
// authentications and probes count per /64 (IPv6Prefix), and the alert
// names the last address and the network. Addresses of other /64s count
// apart; IPv4 addresses count one by one; IPv6Prefix 128 counts each
// address alone.
func TestIPv6CountedPerNetwork(t *testing.T) {
	f := newFeed(detector.Default())
	for i := range 5 {
		f.authFail(time.Duration(i)*time.Second, fmt.Sprintf("2001:db8:1:2::%x", i+1), "200")
		f.authFail(time.Duration(i)*time.Second, fmt.Sprintf("2001:db8:1:%x::1", i+3), "200") // five /64s
		f.authFail(time.Duration(i)*time.Second, fmt.Sprintf("203.0.113.%d", i+1), "200")     // five addresses
	}
	var crit []detector.Alert
	for _, a := range f.alerts {
		if a.Severity == detector.Critical {
			crit = append(crit, a)
		}
	}
	if len(crit) != 1 || crit[0].Rule != detector.RuleAuthFailures || crit[0].Count != 5 ||
		crit[0].IP != netip.MustParseAddr("2001:db8:1:2::5") || crit[0].Net != netip.MustParsePrefix("2001:db8:1:2::/64") {
		t.Fatalf("critical alerts %+v, want one auth_failures of 2001:db8:1:2::/64, last address 2001:db8:1:2::5", crit)
	}
	if st := f.d.Stats(); st.Addresses != 1+5+5 {
		t.Fatalf("%d sources tracked, want 11 (one /64, five /64s, five IPv4 addresses)", st.Addresses)
	}

	probes := newFeed(detector.Default())
	for i := range 5 {
		probes.send(time.Duration(i)*time.Second, ami.Event{Kind: ami.KindSecurity, Security: ami.SecFailedACL, ACLName: "no_extension_match",
			Service: "SIP", AccountID: "0044207946000" + fmt.Sprint(i), RemoteAddr: netip.MustParseAddr(fmt.Sprintf("2001:db8:9::%x", i+1))})
	}
	if n := probes.count(detector.RuleFailedProbes, detector.Critical); n != 1 {
		t.Fatalf("%d critical failed_probes alerts from five addresses of one /64, want 1", n)
	}

	cfg := detector.Default()
	cfg.IPv6Prefix = 128
	alone := newFeed(cfg)
	for i := range 5 {
		alone.authFail(time.Duration(i)*time.Second, fmt.Sprintf("2001:db8:1:2::%x", i+1), "200")
	}
	if n := len(alone.alerts); n != 0 {
		t.Fatalf("IPv6Prefix 128: %d alerts from five addresses with one failure each, want none", n)
	}
}
