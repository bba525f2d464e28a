package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func TestConvertAttackMixed(t *testing.T) {
	data, err := os.ReadFile("../../testdata/transcripts/attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := Convert(bytes.NewReader(data), &out)
	if err != nil {
		t.Fatal(err)
	}
	// 62 ChallengeSent, 10 SuccessfulAuth, 9 InvalidPassword, 4 FailedACL,
	// 1 ChallengeResponseFailed; a NOTICE for each of the last 14.
	want := Stats{Messages: 4093, Lines: 4093, Security: 86, Notice: 14, Verbose: 4093 - 86 - 14}
	if st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != want.Lines {
		t.Fatalf("%d lines written", len(lines))
	}
	for _, line := range []string{
		`[Nov 25 12:46:57] SECURITY[1705] res_security_log.c: SecurityEvent="InvalidPassword",EventTV="2026-11-25T12:46:57.213+0000",Severity="Error",Service="SIP",EventVersion="2",AccountID="200",SessionID="0x7fa2b404e760",LocalAddress="IPV4/UDP/127.0.0.1/5060",RemoteAddress="IPV4/UDP/127.0.0.4/5080",Challenge="032b3423",ReceivedChallenge="032b3423",ReceivedHash="7b91e0bd711f5e1433843b6444a7b4d4"`,
		`[Nov 25 12:46:57] NOTICE[1718] chan_sip.c: Registration from '<sip:200@127.0.0.1>' failed for '127.0.0.4:5080' - Wrong password`,
		`[Nov 25 12:46:57] NOTICE[1718] chan_sip.c: Registration from '<sip:201@127.0.0.1>' failed for '127.0.0.4:5080' - Username/auth name mismatch`,
		`[Nov 25 12:47:00] NOTICE[1718] chan_sip.c: Call from '200' (127.0.0.2:5071) to extension '+442079460000' rejected because extension not found in context 'from-internal'.`,
		`[Nov 25 12:46:55] VERBOSE[1718] chan_sip.c: Registered SIP '200' at 127.0.0.2:5070`,
		`[Nov 25 12:46:57] VERBOSE[2103][C-00000002] pbx.c: Executing [02079460123@from-internal:2] Dial("SIP/201-00000007", "SIP/carrier/02079460123,60") in new stack`,
		`[Nov 25 12:46:57] VERBOSE[2103][C-00000002] app_dial.c: Called SIP/carrier/02079460123`,
		`[Nov 25 12:46:57] VERBOSE[2103][C-00000002] bridge_channel.c: Channel SIP/carrier-00000008 joined 'simple_bridge' basic-bridge <e94be843-ad70-46ce-aae0-ecdae5d04a24>`,
	} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("no line %s", line)
		}
	}
	// A NOTICE follows the SECURITY line of its failure.
	for i, l := range lines {
		if strings.Contains(l, " NOTICE[") && !strings.Contains(lines[i-1], `SecurityEvent="`) {
			t.Errorf("line %d: NOTICE after %q", i+1, lines[i-1])
		}
	}
}

func TestAddrPort(t *testing.T) {
	for in, want := range map[string]string{
		"IPV4/UDP/127.0.0.4/5064":   "127.0.0.4:5064",
		"IPV6/UDP/2001:db8::1/5060": "[2001:db8::1]:5060",
		"garbage":                   "garbage",
	} {
		if got := addrPort(in); got != want {
			t.Errorf("addrPort(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRunCopies(t *testing.T) {
	var one, three, stderr bytes.Buffer
	path := "../../testdata/transcripts/pjsip-bruteforce.ami"
	if code := run([]string{path}, &one, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if code := run([]string{"--copies", "3", path}, &three, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if one.Len() == 0 || three.String() != strings.Repeat(one.String(), 3) {
		t.Errorf("3 copies are not the log three times")
	}
	if !strings.Contains(one.String(), "res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:9999@127.0.0.1>' failed for '127.0.0.6:") {
		t.Errorf("no PJSIP NOTICE for 9999 in\n%s", one.String())
	}
}
