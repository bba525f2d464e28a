package ami

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// crlf turns a frame written with \n line endings into the wire form and
// closes it with an empty line.
func crlf(s string) string {
	return strings.ReplaceAll(strings.TrimLeft(s, "\n"), "\n", "\r\n") + "\r\n"
}

func readOne(t testing.TB, frame string) *Message {
	t.Helper()
	var m Message
	if err := NewReader(strings.NewReader(frame), ReaderOptions{}).Next(&m); err != nil {
		t.Fatalf("reading frame: %v", err)
	}
	return &m
}

// Frames copied from ../../testdata/transcripts (Asterisk 20.20.1), except
// where a comment says otherwise.
const (
	frameNewchannel = `
Event: Newchannel
Privilege: call,all
Channel: SIP/201-00000007
ChannelState: 0
ChannelStateDesc: Down
CallerIDNum: 201
CallerIDName: Bob
ConnectedLineNum: <unknown>
ConnectedLineName: <unknown>
Language: en
AccountCode: 
Context: from-internal
Exten: 02079460123
Priority: 1
Uniqueid: 1795610817.8
Linkedid: 1795610817.8
TimeReceived: 2026-11-25T12:46:57.014859Z
`
	frameDialBegin = `
Event: DialBegin
Privilege: call,all
Channel: SIP/201-00000007
ChannelState: 4
ChannelStateDesc: Ring
CallerIDNum: 201
CallerIDName: Bob
ConnectedLineNum: <unknown>
ConnectedLineName: <unknown>
Language: en
AccountCode: 
Context: from-internal
Exten: 02079460123
Priority: 2
Uniqueid: 1795610817.8
Linkedid: 1795610817.8
DestChannel: SIP/carrier-00000008
DestChannelState: 0
DestChannelStateDesc: Down
DestCallerIDNum: 02079460123
DestCallerIDName: <unknown>
DestConnectedLineNum: 201
DestConnectedLineName: Bob
DestLanguage: en
DestAccountCode: 
DestContext: from-carrier
DestExten: 02079460123
DestPriority: 1
DestUniqueid: 1795610817.9
DestLinkedid: 1795610817.8
DialString: carrier/02079460123
TimeReceived: 2026-11-25T12:46:57.016036Z
`
	frameDialEnd = `
Event: DialEnd
Privilege: call,all
Channel: SIP/201-00000007
ChannelState: 4
ChannelStateDesc: Ring
CallerIDNum: 201
CallerIDName: Bob
ConnectedLineNum: <unknown>
ConnectedLineName: <unknown>
Language: en
AccountCode: 
Context: from-internal
Exten: 02079460123
Priority: 2
Uniqueid: 1795610817.8
Linkedid: 1795610817.8
DestChannel: SIP/carrier-00000008
DestChannelState: 6
DestChannelStateDesc: Up
DestCallerIDNum: 02079460123
DestCallerIDName: <unknown>
DestConnectedLineNum: 201
DestConnectedLineName: Bob
DestLanguage: en
DestAccountCode: 
DestContext: from-carrier
DestExten: 
DestPriority: 1
DestUniqueid: 1795610817.9
DestLinkedid: 1795610817.8
DialStatus: ANSWER
TimeReceived: 2026-11-25T12:46:57.017679Z
`
	frameHangup = `
Event: Hangup
Privilege: call,all
Channel: PJSIP/300-00000001
ChannelState: 6
ChannelStateDesc: Up
CallerIDNum: 300
CallerIDName: Carol
ConnectedLineNum: <unknown>
ConnectedLineName: <unknown>
Language: en
AccountCode: 
Context: from-internal
Exten: 009722079460555
Priority: 2
Uniqueid: 1795610821.56
Linkedid: 1795610821.56
Cause: 16
Cause-txt: Normal Clearing
TimeReceived: 2026-11-25T12:47:05.369650Z
`
	frameInvalidPassword = `
Event: InvalidPassword
Privilege: security,all
EventTV: 2026-11-25T12:46:57.213+0000
Severity: Error
Service: SIP
EventVersion: 2
AccountID: 200
SessionID: 0x7fa2b404e760
LocalAddress: IPV4/UDP/127.0.0.1/5060
RemoteAddress: IPV4/UDP/127.0.0.4/5080
Challenge: 032b3423
ReceivedChallenge: 032b3423
ReceivedHash: 7b91e0bd711f5e1433843b6444a7b4d4
TimeReceived: 2026-11-25T12:46:57.214129Z
`
	frameFailedACL = `
Event: FailedACL
Privilege: security,all
EventTV: 2026-11-25T12:47:00.034+0000
Severity: Error
Service: SIP
EventVersion: 1
AccountID: +442079460000
SessionID: 0x7fa2b4104630
LocalAddress: IPV4/UDP/127.0.0.1/5060
RemoteAddress: IPV4/UDP/127.0.0.2/5071
ACLName: no_extension_match
TimeReceived: 2026-11-25T12:47:00.034741Z
`
	frameChallengeResponseFailed = `
Event: ChallengeResponseFailed
Privilege: security,all
EventTV: 2026-11-25T12:49:26.065+0000
Severity: Error
Service: PJSIP
EventVersion: 1
AccountID: 300
SessionID: 1-30326@127.0.0.6
LocalAddress: IPV4/UDP/127.0.0.1/5062
RemoteAddress: IPV4/UDP/127.0.0.6/5082
Challenge: 1795610966/9ad82d98a895686159ddc817aceb34bf
Response: 5e05ce6079f07c0bdfef62e5c6e74c1f
ExpectedResponse: 
TimeReceived: 2026-11-25T12:49:26.066148Z
`
	frameInvalidAccountID = `
Event: InvalidAccountID
Privilege: security,all
EventTV: 2026-11-25T12:49:26.465+0000
Severity: Error
Service: PJSIP
EventVersion: 1
AccountID: 9999
SessionID: 3-30326@127.0.0.6
LocalAddress: IPV4/UDP/127.0.0.1/5062
RemoteAddress: IPV4/UDP/127.0.0.6/5082
TimeReceived: 2026-11-25T12:49:26.465774Z
`
	frameSuccessfulAuthPJSIP = `
Event: SuccessfulAuth
Privilege: security,all
EventTV: 2026-11-25T12:46:56.002+0000
Severity: Informational
Service: PJSIP
EventVersion: 1
AccountID: 300
SessionID: 1-28445@127.0.0.5
LocalAddress: IPV4/UDP/127.0.0.1/5062
RemoteAddress: IPV4/UDP/127.0.0.5/5072
UsingPassword: 1
TimeReceived: 2026-11-25T12:46:56.002539Z
`
	frameSuccessfulAuthAMI = `
Event: SuccessfulAuth
Privilege: security,all
EventTV: 2026-11-25T12:46:54.751+0000
Severity: Informational
Service: AMI
EventVersion: 1
AccountID: guard
SessionID: 0x7fa2b40391d0
LocalAddress: IPV4/TCP/127.0.0.1/5038
RemoteAddress: IPV4/TCP/127.0.0.1/49058
UsingPassword: 0
SessionTV: 2026-11-25T12:46:54.751+0000
TimeReceived: 2026-11-25T12:46:54.751740Z
`
	framePeerStatus = `
Event: PeerStatus
Privilege: system,all
ChannelType: SIP
Peer: SIP/201
PeerStatus: Registered
Address: 127.0.0.3:5063
TimeReceived: 2026-11-25T12:46:55.778571Z
`
	frameVarSet = `
Event: VarSet
Privilege: dialplan,all
Channel: SIP/carrier-00000001
ChannelState: 6
ChannelStateDesc: Up
CallerIDNum: 02079460123
CallerIDName: <unknown>
ConnectedLineNum: 201
ConnectedLineName: Bob
Language: en
AccountCode: 
Context: from-carrier
Exten: 
Priority: 1
Uniqueid: 1795610783.1
Linkedid: 1795610783.0
Variable: RTPAUDIOQOS
Value: ssrc=1
TimeReceived: 2026-11-25T12:46:55.491076Z
`
)

func TestDecode(t *testing.T) {
	ip := netip.MustParseAddr
	tests := []struct {
		name  string
		frame string
		want  Event
	}{
		{"Newchannel", frameNewchannel, Event{
			Kind: KindNewchannel, Channel: "SIP/201-00000007", Uniqueid: "1795610817.8",
			Linkedid: "1795610817.8", Exten: "02079460123", Context: "from-internal", CallerIDNum: "201",
		}},
		{"DialBegin", frameDialBegin, Event{
			Kind: KindDialBegin, Channel: "SIP/201-00000007", Uniqueid: "1795610817.8",
			Linkedid: "1795610817.8", Exten: "02079460123", Context: "from-internal", CallerIDNum: "201",
			DestChannel: "SIP/carrier-00000008", DestUniqueid: "1795610817.9", DestExten: "02079460123",
			DialString: "carrier/02079460123",
		}},
		{"DialEnd", frameDialEnd, Event{
			Kind: KindDialEnd, Channel: "SIP/201-00000007", Uniqueid: "1795610817.8",
			Linkedid: "1795610817.8", Exten: "02079460123", Context: "from-internal", CallerIDNum: "201",
			DestChannel: "SIP/carrier-00000008", DestUniqueid: "1795610817.9", DialStatus: "ANSWER",
		}},
		{"Hangup", frameHangup, Event{
			Kind: KindHangup, Channel: "PJSIP/300-00000001", Uniqueid: "1795610821.56",
			Linkedid: "1795610821.56", Exten: "009722079460555", Context: "from-internal",
			CallerIDNum: "300", Cause: 16,
		}},
		{"InvalidPassword", frameInvalidPassword, Event{
			Kind: KindSecurity, Security: SecInvalidPassword, Service: "SIP", AccountID: "200",
			SessionID: "0x7fa2b404e760", RemoteAddr: ip("127.0.0.4"), RemotePort: 5080,
		}},
		{"FailedACL", frameFailedACL, Event{
			Kind: KindSecurity, Security: SecFailedACL, Service: "SIP", AccountID: "+442079460000",
			SessionID: "0x7fa2b4104630", ACLName: "no_extension_match", RemoteAddr: ip("127.0.0.2"), RemotePort: 5071,
		}},
		{"ChallengeResponseFailed", frameChallengeResponseFailed, Event{
			Kind: KindSecurity, Security: SecChallengeResponseFailed, Service: "PJSIP", AccountID: "300",
			SessionID: "1-30326@127.0.0.6", RemoteAddr: ip("127.0.0.6"), RemotePort: 5082,
		}},
		{"InvalidAccountID", frameInvalidAccountID, Event{
			Kind: KindSecurity, Security: SecInvalidAccountID, Service: "PJSIP", AccountID: "9999",
			SessionID: "3-30326@127.0.0.6", RemoteAddr: ip("127.0.0.6"), RemotePort: 5082,
		}},
		{"SuccessfulAuth PJSIP", frameSuccessfulAuthPJSIP, Event{
			Kind: KindSecurity, Security: SecSuccessfulAuth, Service: "PJSIP", AccountID: "300",
			SessionID: "1-28445@127.0.0.5", RemoteAddr: ip("127.0.0.5"), RemotePort: 5072, UsingPassword: true,
		}},
		{"SuccessfulAuth AMI", frameSuccessfulAuthAMI, Event{
			Kind: KindSecurity, Security: SecSuccessfulAuth, Service: "AMI", AccountID: "guard",
			SessionID: "0x7fa2b40391d0", RemoteAddr: ip("127.0.0.1"), RemotePort: 49058,
		}},
		{"PeerStatus", framePeerStatus, Event{
			Kind: KindPeerStatus, Peer: "SIP/201", Status: "Registered", Addr: ip("127.0.0.3"), Port: 5063,
		}},
		{"FullyBooted", "Event: FullyBooted\nPrivilege: system,all\nUptime: 127\nLastReload: 17\nStatus: Fully Booted\n",
			Event{Kind: KindFullyBooted}},
		// Written for these tests: an IPv6 source (Asterisk prints it
		// without brackets), an IPv4-mapped one, and malformed ones.
		{"IPv6 RemoteAddress", "Event: InvalidPassword\nPrivilege: security,all\nService: SIP\nRemoteAddress: IPV6/UDP/2001:db8::5/5060\n",
			Event{Kind: KindSecurity, Security: SecInvalidPassword, Service: "SIP", RemoteAddr: ip("2001:db8::5"), RemotePort: 5060}},
		{"IPv4-mapped RemoteAddress", "Event: InvalidPassword\nPrivilege: security,all\nRemoteAddress: IPV6/TCP/::ffff:127.0.0.4/5080\n",
			Event{Kind: KindSecurity, Security: SecInvalidPassword, RemoteAddr: ip("127.0.0.4"), RemotePort: 5080}},
		{"bad RemoteAddress", "Event: InvalidPassword\nPrivilege: security,all\nRemoteAddress: IPV4/UDP/not-an-ip/5080\n",
			Event{Kind: KindSecurity, Security: SecInvalidPassword}},
		{"RemoteAddress without slashes", "Event: InvalidPassword\nPrivilege: security,all\nRemoteAddress: 127.0.0.4\n",
			Event{Kind: KindSecurity, Security: SecInvalidPassword}},
		{"RemoteAddress bad port", "Event: InvalidPassword\nPrivilege: security,all\nRemoteAddress: IPV4/UDP/127.0.0.4/99999\n",
			Event{Kind: KindSecurity, Security: SecInvalidPassword, RemoteAddr: ip("127.0.0.4")}},
		{"other security event", "Event: UnexpectedAddress\nPrivilege: security,all\nService: SIP\nAccountID: 200\nRemoteAddress: IPV4/UDP/10.0.0.1/5060\n",
			Event{Kind: KindSecurity, Security: SecOther, Service: "SIP", AccountID: "200", RemoteAddr: ip("10.0.0.1"), RemotePort: 5060}},
		{"SuccessfulAuth without password", "Event: SuccessfulAuth\nPrivilege: security,all\nService: SIP\nAccountID: carrier\nRemoteAddress: IPV4/UDP/127.0.0.9/5090\nUsingPassword: 0\n",
			Event{Kind: KindSecurity, Security: SecSuccessfulAuth, Service: "SIP", AccountID: "carrier", RemoteAddr: ip("127.0.0.9"), RemotePort: 5090}},
		{"UsingPassword other than 1", "Event: SuccessfulAuth\nPrivilege: security,all\nService: SIP\nAccountID: 200\nUsingPassword: yes\n",
			Event{Kind: KindSecurity, Security: SecSuccessfulAuth, Service: "SIP", AccountID: "200"}},
		{"UsingPassword case and spaces", "event: successfulauth\nprivilege: security,all\nservice: PJSIP\naccountid: 300\nusingpassword:  1 \n",
			Event{Kind: KindSecurity, Security: SecSuccessfulAuth, Service: "PJSIP", AccountID: "300", UsingPassword: true}},
		{"PeerStatus IPv6", "Event: PeerStatus\nPrivilege: system,all\nPeer: SIP/200\nPeerStatus: Registered\nAddress: [2001:db8::1]:5070\n",
			Event{Kind: KindPeerStatus, Peer: "SIP/200", Status: "Registered", Addr: ip("2001:db8::1"), Port: 5070}},
		{"PeerStatus bare IPv6 and Port header", "Event: PeerStatus\nPrivilege: system,all\nPeer: IAX2/trunk\nPeerStatus: Reachable\nAddress: 2001:db8::1\nPort: 4569\n",
			Event{Kind: KindPeerStatus, Peer: "IAX2/trunk", Status: "Reachable", Addr: ip("2001:db8::1"), Port: 4569}},
		{"PeerStatus unregistered", "Event: PeerStatus\nPrivilege: system,all\nPeer: SIP/200\nPeerStatus: Unregistered\nCause: Expired\n",
			Event{Kind: KindPeerStatus, Peer: "SIP/200", Status: "Unregistered"}},
		{"ContactStatus", "Event: ContactStatus\nPrivilege: system,all\nURI: sip:300@127.0.0.5:5073;ob\nContactStatus: Reachable\nAOR: 300\nEndpointName: 300\nRoundtripUsec: 1234\n",
			Event{Kind: KindContactStatus, Peer: "300", Status: "Reachable", Addr: ip("127.0.0.5"), Port: 5073}},
		{"ContactStatus IPv6", "Event: ContactStatus\nPrivilege: system,all\nURI: sip:[2001:db8::1]:5060\nContactStatus: Created\nEndpointName: 301\n",
			Event{Kind: KindContactStatus, Peer: "301", Status: "Created", Addr: ip("2001:db8::1"), Port: 5060}},
		{"ContactStatus host name", "Event: ContactStatus\nPrivilege: system,all\nURI: sips:301@pbx.example.com:5061;transport=tls\nContactStatus: Removed\nEndpointName: 301\n",
			Event{Kind: KindContactStatus, Peer: "301", Status: "Removed"}},
		// Asterisk 1.8/11 Dial events, with the header case of those
		// versions and case variants.
		{"Asterisk 11 Dial Begin", `
Event: Dial
Privilege: call,all
SubEvent: Begin
Channel: SIP/200-00000001
Destination: SIP/carrier-00000002
CallerIDNum: 200
CallerIDName: Alice
ConnectedLineNum: 011442079460000
ConnectedLineName: <unknown>
UniqueID: 1795610783.2
DestUniqueID: 1795610783.3
Dialstring: carrier/011442079460000
`, Event{
			Kind: KindDialBegin, Channel: "SIP/200-00000001", Uniqueid: "1795610783.2", CallerIDNum: "200",
			DestChannel: "SIP/carrier-00000002", DestUniqueid: "1795610783.3", DialString: "carrier/011442079460000",
		}},
		{"Asterisk 11 Dial Begin, other case", "event: dial\nprivilege: call,all\nsubevent: begin\nchannel: SIP/200-00000001\ndestination: SIP/carrier-00000002\nuniqueid: 1.2\nDESTUNIQUEID: 1.3\nDIALSTRING: carrier/0044\n",
			Event{Kind: KindDialBegin, Channel: "SIP/200-00000001", Uniqueid: "1.2",
				DestChannel: "SIP/carrier-00000002", DestUniqueid: "1.3", DialString: "carrier/0044"}},
		{"Asterisk 11 Dial End", "Event: Dial\nPrivilege: call,all\nSubEvent: End\nChannel: SIP/200-00000001\nUniqueID: 1795610783.2\nDialStatus: ANSWER\n",
			Event{Kind: KindDialEnd, Channel: "SIP/200-00000001", Uniqueid: "1795610783.2", DialStatus: "ANSWER"}},
		{"Hangup without Cause", "Event: Hangup\nPrivilege: call,all\nChannel: SIP/200-00000001\nCause: x\n",
			Event{Kind: KindHangup, Channel: "SIP/200-00000001"}},
		{"first of repeated headers wins", "Event: Hangup\nChannel: SIP/a-00000001\nChannel: SIP/b-00000001\nCause: 21\nCause: 16\n",
			Event{Kind: KindHangup, Channel: "SIP/a-00000001", Cause: 21}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := readOne(t, crlf(tt.frame))
			var ev Event
			ev.Seq = 99 // Decode resets the event
			if !Decode(m, &ev) {
				t.Fatal("Decode returned false")
			}
			if ev != tt.want {
				t.Errorf("got  %+v\nwant %+v", ev, tt.want)
			}
		})
	}
}

func TestDecodeNotNeeded(t *testing.T) {
	for name, frame := range map[string]string{
		"VarSet":           frameVarSet,
		"HangupRequest":    "Event: HangupRequest\nPrivilege: call,all\nChannel: SIP/201-00000000\nCause: 18\n",
		"response":         "Response: Success\nMessage: Authentication accepted\n",
		"Dial other":       "Event: Dial\nPrivilege: call,all\nSubEvent: Other\nChannel: SIP/200-00000001\n",
		"Dial no SubEvent": "Event: Dial\nPrivilege: call,all\nSource: SIP/200-00000001\n",
		"long name":        "Event: " + strings.Repeat("A", 40) + "\nPrivilege: call,all\n",
		"long security":    "Event: " + strings.Repeat("A", 40) + "\nPrivilege: reporting,all\n",
	} {
		m := readOne(t, crlf(frame))
		ev := Event{Kind: KindHangup, Channel: "stale"}
		if Decode(m, &ev) {
			t.Errorf("%s: Decode returned true: %+v", name, ev)
		}
		if ev != (Event{}) {
			t.Errorf("%s: event not reset: %+v", name, ev)
		}
		if n := testing.AllocsPerRun(100, func() { Decode(m, &ev) }); n != 0 {
			t.Errorf("%s: Decode allocates %v times", name, n)
		}
	}
}

func TestDecodeAllocs(t *testing.T) {
	for name, frame := range map[string]string{
		"DialBegin":       frameDialBegin,
		"Hangup":          frameHangup,
		"InvalidPassword": frameInvalidPassword,
		"PeerStatus":      framePeerStatus,
	} {
		m := readOne(t, crlf(frame))
		var ev Event
		// One string holds all the fields and the address text.
		if n := testing.AllocsPerRun(100, func() { Decode(m, &ev) }); n != 1 {
			t.Errorf("%s: Decode allocates %v times", name, n)
		}
	}
}

func TestDecodeCopiesStrings(t *testing.T) {
	r := NewReader(strings.NewReader(crlf(frameDialBegin)+crlf(frameVarSet)), ReaderOptions{})
	var m Message
	if err := r.Next(&m); err != nil {
		t.Fatal(err)
	}
	var ev Event
	if !Decode(&m, &ev) {
		t.Fatal("Decode returned false")
	}
	want := ev
	// Reading the next message overwrites the buffer the values came from.
	if err := r.Next(&m); err != nil {
		t.Fatal(err)
	}
	for i := range m.buf {
		m.buf[i] = 'X'
	}
	if ev != want || ev.Channel != "SIP/201-00000007" || ev.DialString != "carrier/02079460123" {
		t.Errorf("event changed with the buffer: %+v", ev)
	}
}

func TestDecodeTranscripts(t *testing.T) {
	// Every call and security event of the fixture decodes; counts from
	// grep over the file.
	tr := NewTranscript(strings.NewReader(string(readFixture(t, "attack-mixed.ami"))))
	var (
		m      Message
		ev     Event
		counts = map[Kind]int{}
		secs   = map[SecurityType]int{}
		pw     []string
	)
	for {
		_, _, err := tr.Next(&m)
		if err != nil {
			break
		}
		if Decode(&m, &ev) {
			counts[ev.Kind]++
			if ev.Kind == KindSecurity {
				secs[ev.Security]++
				if ev.UsingPassword {
					pw = append(pw, ev.Service+"/"+ev.AccountID)
				}
				if !ev.RemoteAddr.IsValid() || ev.RemotePort == 0 {
					t.Errorf("security event without address: %s", m.Raw())
				}
			}
			if ev.Kind == KindDialBegin {
				if _, ok := ParseChannel(ev.Channel); !ok {
					t.Errorf("DialBegin channel %q does not parse", ev.Channel)
				}
			}
		}
	}
	// Counts of `grep -c '^Event: <name>'` over the file.
	want := map[Kind]int{KindNewchannel: 90, KindDialBegin: 45, KindDialEnd: 45, KindHangup: 94,
		KindSecurity: 62 + 10 + 9 + 4 + 1, KindPeerStatus: 2, KindFullyBooted: 1}
	wantSec := map[SecurityType]int{SecChallengeSent: 62, SecSuccessfulAuth: 10, SecInvalidPassword: 9,
		SecFailedACL: 4, SecChallengeResponseFailed: 1}
	if fmt.Sprint(counts) != fmt.Sprint(want) || fmt.Sprint(secs) != fmt.Sprint(wantSec) {
		t.Errorf("counts %v, want %v\nsecurity %v, want %v", counts, want, secs, wantSec)
	}
	// UsingPassword: 1 on the REGISTERs of 201 and 200 and on every
	// authenticated PJSIP request of 300; 0 on the guard's AMI login.
	wantPw := "[SIP/201 SIP/200 PJSIP/300 PJSIP/300 PJSIP/300 PJSIP/300 PJSIP/300 PJSIP/300 PJSIP/300]"
	if fmt.Sprint(pw) != wantPw {
		t.Errorf("UsingPassword on %v, want %v", pw, wantPw)
	}
}
