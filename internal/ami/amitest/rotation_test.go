package amitest

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

// streamAll plays the server's transcript and returns every message the
// client got up to the end of it.
func streamAll(t *testing.T, s *Server, c *client) []*frame {
	t.Helper()
	s.Play()
	select {
	case <-s.Done():
	case <-time.After(readTimeout):
		t.Fatal("transcript not streamed")
	}
	return c.ping("end")
}

// TestRotationSIP rotates 200's secret with Reload: chan_sip before
// attack-mixed.ami plays: 200's calls turn into InvalidPassword as in
// after-rotation.ami; the others are untouched.
func TestRotationSIP(t *testing.T) {
	t.Parallel()
	raw, _ := os.ReadFile(attackMixed)
	s := start(t, Options{Transcript: bytes.NewReader(raw)})
	c := dial(t, s)
	c.login("")
	c.ping("drain")
	action, _ := dialogFor(t, rotateDialog, "rotate-200")
	c.send(actionLines(action)...)
	if f, _ := c.response("rotate-200"); f.get("Response") != "Success" {
		t.Fatalf("rotate: %v", f.hdrs)
	}
	c.ping("drain2") // the Reload event

	// What the recording had: 200's calls (by dialled number) and FailedACLs.
	var dialled []string
	for _, m := range scriptFrames(t, attackMixed) {
		if m.event == "newchannel" && strings.HasPrefix(m.get("Channel"), "SIP/200-") {
			dialled = append(dialled, m.get("Exten"))
		}
		if m.event == "failedacl" {
			dialled = append(dialled, m.get("AccountID"))
		}
	}
	if len(dialled) != 40 {
		t.Fatalf("recording has %d calls of 200, want 40", len(dialled))
	}

	got := streamAll(t, s, c)
	var invalid []string
	newchan := map[string]int{}
	for _, f := range got {
		if strings.HasPrefix(f.get("Channel"), "SIP/200-") {
			t.Fatalf("event of a call of 200 after the rotation: %v", f.hdrs[:3])
		}
		if f.isEvent("Newchannel") {
			newchan[strings.SplitN(f.get("Channel"), "-", 2)[0]]++
		}
		if f.isEvent("FailedACL") {
			t.Errorf("FailedACL after the rotation: %v", f.hdrs)
		}
		if f.isEvent("InvalidPassword") && f.get("RemoteAddress") == "IPV4/UDP/127.0.0.2/5071" {
			invalid = append(invalid, f.get("AccountID"))
			if f.get("Service") != "SIP" || f.get("EventVersion") != "2" || f.get("Challenge") == "" ||
				f.get("Challenge") != f.get("ReceivedChallenge") || len(f.get("ReceivedHash")) != 32 {
				t.Errorf("InvalidPassword: %v", f.hdrs)
			}
		}
	}
	if strings.Join(invalid, " ") != strings.Join(dialled, " ") {
		t.Errorf("InvalidPassword AccountIDs\n got %v\nwant %v", invalid, dialled)
	}
	// 201 (3 calls) and 300 (6 calls) still call out through the carrier.
	if newchan["SIP/201"] != 3 || newchan["PJSIP/300"] != 6 || newchan["SIP/carrier"] != 9 {
		t.Errorf("Newchannel counts %v", newchan)
	}
	// The REGISTER of 200 from the thief fails too.
	found := false
	for _, f := range got {
		if f.isEvent("InvalidPassword") && f.get("AccountID") == "200" && f.get("RemoteAddress") == "IPV4/UDP/127.0.0.2/5070" {
			found = true
		}
	}
	if !found {
		t.Errorf("no InvalidPassword for 200's REGISTER")
	}
	if n := len(s.LiveChannels()); n != 0 {
		t.Errorf("%d live", n)
	}
}

// TestRotationNeedsReload: an UpdateConfig without Reload changes the file
// only; `sip reload` then makes it bite.
func TestRotationNeedsReload(t *testing.T) {
	t.Parallel()
	raw, _ := os.ReadFile(attackMixed)
	s := start(t, Options{Transcript: bytes.NewReader(raw)})
	c := dial(t, s)
	c.login("call")
	c.send("Action: UpdateConfig", "SrcFilename: sip.conf", "DstFilename: sip.conf", "Action-000000: Update",
		"Cat-000000: 200", "Var-000000: secret", "Value-000000: x", "ActionID: u")
	c.response("u")
	if !strings.Contains(s.Conf("sip.conf"), "secret = x") {
		t.Fatal("file not updated")
	}
	s.mu.Lock()
	rotated := s.pbx.sipRotated("200")
	s.mu.Unlock()
	if rotated {
		t.Fatal("rotated without a reload")
	}
	c.send("Action: Command", "Command: sip reload", "ActionID: r")
	c.response("r")
	s.mu.Lock()
	rotated = s.pbx.sipRotated("200")
	s.mu.Unlock()
	if !rotated {
		t.Fatal("not rotated after sip reload")
	}
}

func TestRotationPJSIP(t *testing.T) {
	t.Parallel()
	raw, _ := os.ReadFile(attackMixed)
	s := start(t, Options{Transcript: bytes.NewReader(raw)})
	c := dial(t, s)
	c.login("")
	c.ping("drain")
	action, _ := dialogFor(t, dialog20, "updateconfig-pjsip")
	c.send(actionLines(action)...)
	c.response("updateconfig-pjsip")
	c.ping("drain2")
	got := streamAll(t, s, c)
	crf := 0
	for _, f := range got {
		if strings.HasPrefix(f.get("Channel"), "PJSIP/300-") {
			t.Fatalf("event of a call of 300 after the rotation: %v", f.hdrs[:3])
		}
		if f.isEvent("SuccessfulAuth") && f.get("Service") == "PJSIP" {
			t.Errorf("PJSIP SuccessfulAuth after the rotation: %v", f.hdrs)
		}
		if f.isEvent("ChallengeResponseFailed") && f.get("AccountID") == "300" {
			crf++
			if f.get("Service") != "PJSIP" || !strings.HasPrefix(f.get("RemoteAddress"), "IPV4/UDP/127.0.0.5/") {
				t.Errorf("ChallengeResponseFailed: %v", f.hdrs)
			}
		}
	}
	if crf != 7 { // its REGISTER and its 6 calls
		t.Errorf("%d ChallengeResponseFailed for 300, want 7", crf)
	}
}
