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
		{"repeated headers: the first kept, forged", "Event: Hangup\nChannel: SIP/a-00000001\nChannel: SIP/b-00000001\nCause: 21\nCause: 16\n",
			Event{Kind: KindHangup, Channel: "SIP/a-00000001", Cause: 21, Forged: true, ForgedField: "Channel"}},
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
		// A repeated header in an event the guard does not need costs
		// nothing either.
		"VarSet repeating Channel": strings.Replace(frameVarSet, "CallerIDName: <unknown>",
			"CallerIDName: x\nChannel: SIP/999-00000001", 1),
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

// Frames copied from ../../testdata/transcripts/asterisk11-attack-sip.ami
// (Asterisk 11.25.3).
const (
	frame11Newchannel = `
Event: Newchannel
Privilege: call,all
Channel: SIP/200-000000aa
ChannelState: 0
ChannelStateDesc: Down
CallerIDNum: 200
CallerIDName: Alice
AccountCode: 
Exten: 00442071838750
Context: from-internal
Uniqueid: 1796000640.170
TimeReceived: 2026-11-30T01:04:00.762962Z
`
	frame11DialBegin = `
Event: Dial
Privilege: call,all
SubEvent: Begin
Channel: SIP/200-000000aa
Destination: SIP/carrier-000000ab
CallerIDNum: 200
CallerIDName: Alice
ConnectedLineNum: <unknown>
ConnectedLineName: <unknown>
UniqueID: 1796000640.170
DestUniqueID: 1796000640.171
Dialstring: carrier/00442071838750
TimeReceived: 2026-11-30T01:04:00.767318Z
`
	frame11PeerStatus = `
Event: PeerStatus
Privilege: system,all
ChannelType: SIP
Peer: SIP/200
PeerStatus: Registered
Address: 127.0.0.12:5070
TimeReceived: 2026-11-30T01:03:59.709034Z
`
)

func TestDecodeAsterisk11(t *testing.T) {
	ip := netip.MustParseAddr
	for name, tc := range map[string]struct {
		frame string
		want  Event
	}{
		"Newchannel": {frame11Newchannel, Event{Kind: KindNewchannel, Channel: "SIP/200-000000aa",
			Uniqueid: "1796000640.170", Exten: "00442071838750", Context: "from-internal", CallerIDNum: "200"}},
		"Dial Begin": {frame11DialBegin, Event{Kind: KindDialBegin, Channel: "SIP/200-000000aa",
			Uniqueid: "1796000640.170", CallerIDNum: "200", DestChannel: "SIP/carrier-000000ab",
			DestUniqueid: "1796000640.171", DialString: "carrier/00442071838750"}},
		"PeerStatus": {frame11PeerStatus, Event{Kind: KindPeerStatus, Peer: "SIP/200", Status: "Registered",
			Addr: ip("127.0.0.12"), Port: 5070}},
	} {
		var ev Event
		if !Decode(readOne(t, crlf(tc.frame)), &ev) || ev != tc.want {
			t.Errorf("%s:\n got  %+v\n want %+v", name, ev, tc.want)
		}
	}
}

// TestDecodeForged alters real frames the way an attacker would: a value
// Asterisk prints before the headers the guard reads (a caller name, a SIP
// user name) carries a line break and headers of its own.
func TestDecodeForged(t *testing.T) {
	inject := func(frame, old, extra string) string {
		t.Helper()
		if !strings.Contains(frame, old) {
			t.Fatalf("frame lacks %q", old)
		}
		return strings.Replace(frame, old, old+"\n"+extra, 1)
	}
	for _, tc := range []struct {
		name, frame, field string
		check              func(*Event) bool
	}{
		{"11 Newchannel, Channel in the caller name",
			inject(frame11Newchannel, "CallerIDName: Alice", "Channel: SIP/999-00000001"), "Channel",
			func(ev *Event) bool { return ev.Channel == "SIP/200-000000aa" }},
		{"11 Newchannel, Uniqueid in the caller name",
			inject(frame11Newchannel, "CallerIDName: Alice", "Uniqueid: 1796000640.1"), "Uniqueid",
			func(ev *Event) bool { return ev.Uniqueid == "1796000640.1" }},
		{"11 Newchannel, Linkedid in the caller name (11 has none: not repeated)",
			inject(frame11Newchannel, "CallerIDName: Alice", "Linkedid: 1796000640.1"), "Linkedid",
			func(ev *Event) bool { return ev.Linkedid == "1796000640.1" }},
		{"11 Dial, UniqueID in the caller name",
			inject(frame11DialBegin, "CallerIDName: Alice", "UniqueID: 1796000640.1"), "Uniqueid",
			func(ev *Event) bool { return ev.Kind == KindDialBegin }},
		{"11 Dial, DestChannel beside Destination",
			inject(frame11DialBegin, "CallerIDName: Alice", "DestChannel: SIP/999-00000001"), "DestChannel",
			func(ev *Event) bool { return ev.DestChannel == "SIP/carrier-000000ab" }},
		{"20 Newchannel, Exten and Linkedid in the caller name",
			inject(frameNewchannel, "CallerIDName: Bob", "Exten: 0099\nLinkedid: 1"), "Linkedid",
			func(ev *Event) bool { return ev.Exten == "0099" && ev.Linkedid == "1" }},
		{"20 Hangup, Cause in the caller name",
			inject(frameHangup, "CallerIDName: Carol", "Cause: 1"), "Cause",
			func(ev *Event) bool { return ev.Cause == 1 }},
		{"20 DialBegin, DestUniqueid in the caller name",
			inject(frameDialBegin, "CallerIDName: Bob", "DestUniqueid: 1"), "DestUniqueid",
			func(ev *Event) bool { return ev.DestUniqueid == "1" }},
		{"InvalidPassword, RemoteAddress in the account",
			inject(frameInvalidPassword, "AccountID: 200", "RemoteAddress: IPV4/UDP/10.0.0.1/5060"), "RemoteAddress",
			func(ev *Event) bool { return ev.RemoteAddr == netip.MustParseAddr("10.0.0.1") }},
		{"InvalidPassword, AccountID twice",
			inject(frameInvalidPassword, "AccountID: 200", "AccountID: 201"), "AccountID",
			func(ev *Event) bool { return ev.AccountID == "200" }},
		{"PeerStatus, Address twice",
			inject(frame11PeerStatus, "PeerStatus: Registered", "Address: 10.0.0.1:5060"), "Address",
			func(ev *Event) bool { return ev.Addr == netip.MustParseAddr("10.0.0.1") }},
		{"SuccessfulAuth, SessionID twice",
			inject(frameSuccessfulAuthPJSIP, "AccountID: 300", "SessionID: x"), "SessionID",
			func(ev *Event) bool { return ev.SessionID == "x" }},
		{"ContactStatus, EndpointName and URI twice",
			"Event: ContactStatus\nPrivilege: system,all\nURI: sip:300@127.0.0.5:5073\nContactStatus: Reachable\nEndpointName: 300\nURI: sip:300@10.0.0.1\nEndpointName: 301\n", "URI",
			func(ev *Event) bool { return ev.Peer == "300" && ev.Addr == netip.MustParseAddr("127.0.0.5") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := readOne(t, crlf(tc.frame))
			var ev Event
			if !Decode(m, &ev) {
				t.Fatal("Decode returned false")
			}
			if !ev.Forged || ev.ForgedField != tc.field {
				t.Errorf("Forged %v ForgedField %q, want true %q", ev.Forged, ev.ForgedField, tc.field)
			}
			if !tc.check(&ev) {
				t.Errorf("fields: %+v", ev)
			}
			// Marking it costs nothing: still the one shared string.
			if n := testing.AllocsPerRun(100, func() { Decode(m, &ev) }); n != 1 {
				t.Errorf("Decode allocates %v times", n)
			}
		})
	}
}

// TestDecodeLegitimateRepeats: the keys Asterisk itself repeats are not
// forgeries.
func TestDecodeLegitimateRepeats(t *testing.T) {
	for name, frame := range map[string]string{
		// manager.conf channelvars: one ChanVariable per variable, at the
		// end of every channel snapshot (DestChanVariable for the
		// outbound leg).
		"Newchannel with ChanVariable": strings.Replace(frameNewchannel, "TimeReceived:",
			"ChanVariable: CDR(accountcode)=\nChanVariable: SIPCALLID=1-3976@127.0.0.12\nTimeReceived:", 1),
		"DialBegin with DestChanVariable": strings.Replace(frameDialBegin, "DialString:",
			"ChanVariable: A=1\nChanVariable: B=2\nDestChanVariable: A=3\nDestChanVariable: B=4\nDialString:", 1),
		// The Asterisk 20 spelling of the 1.8/11 Dial's headers, once each.
		"11 Dial Begin": frame11DialBegin,
	} {
		var ev Event
		if !Decode(readOne(t, crlf(frame)), &ev) || ev.Forged || ev.ForgedField != "" {
			t.Errorf("%s: %+v", name, ev)
		}
	}
}
