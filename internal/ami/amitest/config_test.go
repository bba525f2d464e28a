package amitest

import (
	"strings"
	"testing"
)

// section returns the lines of the n-th (from 0) category named name in a
// config text.
func section(text, name string, n int) []string {
	var out []string
	in, seen := false, -1
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "[") {
			in = false
			if strings.HasPrefix(l, "["+name+"]") {
				seen++
				in = seen == n
			}
			continue
		}
		if in && strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

func TestGetConfigAsDialog(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	c := dial(t, s)
	c.login("off")
	for _, aid := range []string{"getconfig-sip", "getconfig-pjsip"} {
		action, want := dialogFor(t, dialog20, aid)
		c.send(actionLines(action)...)
		f, _ := c.response(aid)
		sameKeys(t, aid, f, want[0])
		sameValues(t, aid, f, want[0])
	}
	// Same-named categories stay apart; Filter picks one.
	c.send("Action: GetConfig", "Filename: pjsip.conf", "Category: 300", "ActionID: both")
	f, _ := c.response("both")
	if f.get("Category-000000") != "300" || f.get("Category-000001") != "300" ||
		f.get("Line-000000-000000") != "type=endpoint" || f.get("Line-000001-000000") != "type=aor" {
		t.Errorf("[300] twice: %v", f.hdrs)
	}
	c.send("Action: GetConfig", "Filename: pjsip.conf", "Category: 300", "Filter: type=aor", "ActionID: aor")
	f, _ = c.response("aor")
	if f.get("Category-000000") != "300" || f.get("Line-000000-000000") != "type=aor" || f.get("Category-000001") != "" {
		t.Errorf("[300] aor: %v", f.hdrs)
	}
	c.send("Action: GetConfig", "Filename: nosuch.conf", "ActionID: nofile")
	if f, _ := c.response("nofile"); f.get("Message") != "Config file not found" {
		t.Errorf("missing file: %v", f.hdrs)
	}
}

func TestUpdateConfigSIPAsDialog(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	c := dial(t, s)
	c.login("call,security,system")
	c.ping("drain")
	orig := s.Conf("sip.conf")
	if orig != DefaultSIPConf {
		t.Fatal("Conf before any update is not the given text")
	}
	action, want := dialogFor(t, dialog20, "updateconfig-sip")
	c.send(actionLines(action)...)
	f := c.next()
	sameKeys(t, "updateconfig-sip", f, want[0])
	sameValues(t, "updateconfig-sip", f, want[0])
	// Then the Reload event, as the dialog.
	dlg := readDialog(t, dialog20)
	var reload *dialogMsg
	for i, m := range dlg {
		if m.get("ActionID") == "updateconfig-sip" && !m.fromClient {
			reload = dlg[i+1]
		}
	}
	ev := c.next()
	sameKeys(t, "Reload", ev, reload)
	sameValues(t, "Reload", ev, reload)

	text := s.Conf("sip.conf")
	if !strings.HasPrefix(text, ";!\n;! Automatically generated configuration file\n") {
		t.Errorf("no generated header:\n%s", text)
	}
	got := strings.Join(section(text, "200", 0), "\n")
	if want := "type = friend\nhost = dynamic\nsecret = Qm7xT2vLp9RwZ4nK8sYd\ncontext = from-internal\n" +
		"callerid = \"Alice\" <200>\ndisallow = all\nallow = ulaw"; got != want {
		t.Errorf("[200] after update:\n%s\nwant\n%s", got, want)
	}
	if got := strings.Join(section(text, "201", 0), "|"); !strings.Contains(got, "secret = Strong201secret") {
		t.Errorf("[201] touched: %s", got)
	}
	if got := strings.Join(section(text, "carrier", 0), "|"); got != "type = peer|host = 127.0.0.9|port = 5090|context = from-carrier|insecure = port,invite|disallow = all|allow = ulaw" {
		t.Errorf("[carrier]: %s", got)
	}
	// Every original line is still there (as k = v), in order.
	var origVars, newVars []string
	for _, l := range strings.Split(orig, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			if k == "secret" && v == "Leaky200" {
				v = "Qm7xT2vLp9RwZ4nK8sYd"
			}
			origVars = append(origVars, k+" = "+v)
		}
	}
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, " = ") {
			newVars = append(newVars, l)
		}
	}
	if strings.Join(origVars, "\n") != strings.Join(newVars, "\n") {
		t.Errorf("variables changed:\n%s\nwant\n%s", newVars, origVars)
	}
	// GetConfig reads the new value.
	c.send("Action: GetConfig", "Filename: sip.conf", "Category: 200", "ActionID: g")
	if f, _ := c.response("g"); f.get("Line-000000-000002") != "secret=Qm7xT2vLp9RwZ4nK8sYd" {
		t.Errorf("GetConfig after update: %v", f.hdrs)
	}

	action, want = dialogFor(t, dialog20, "updateconfig-missing-category")
	before := s.Conf("sip.conf")
	c.send(actionLines(action)...)
	f, _ = c.response("updateconfig-missing-category")
	sameKeys(t, "missing category", f, want[0])
	sameValues(t, "missing category", f, want[0])
	c.send("Action: UpdateConfig", "SrcFilename: sip.conf", "DstFilename: sip.conf", "Action-000000: Update",
		"Cat-000000: 201", "Var-000000: nosuchvar", "Value-000000: x", "ActionID: novar")
	if f, _ := c.response("novar"); f.get("Response") != "Error" || f.get("Message") != "Update did not complete successfully" {
		t.Errorf("missing variable: %v", f.hdrs)
	}
	if s.Conf("sip.conf") != before {
		t.Errorf("failed updates changed the file")
	}
}

func TestUpdateConfigPJSIPAsDialog(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, dialog, conf string
	}{
		{"asterisk-20", dialog20, DefaultPJSIPConf},
		{"asterisk-22 catfilter", dialog22, PJSIPConf22},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, Options{PJSIPConf: tc.conf})
			c := dial(t, s)
			c.login("call,security,system")
			c.ping("drain")
			action, want := dialogFor(t, tc.dialog, "updateconfig-pjsip")
			c.send(actionLines(action)...)
			f := c.next()
			sameKeys(t, "updateconfig-pjsip", f, want[0])
			sameValues(t, "updateconfig-pjsip", f, want[0])
			if ev := c.next(); !ev.isEvent("Reload") || ev.get("Module") != "res_pjsip.so" || ev.get("Status") != "0" {
				t.Errorf("reload event: %v", ev.hdrs)
			}
			text := s.Conf("pjsip.conf")
			if got := strings.Join(section(text, "300-auth", 0), "|"); got != "type = auth|auth_type = userpass|username = 300|password = Hc3vN8qWz2LxR5tJ7mPa" {
				t.Errorf("[300-auth]: %s", got)
			}
			if got := strings.Join(section(text, "301-auth", 0), "|"); !strings.Contains(got, "password = Strong301secret") {
				t.Errorf("[301-auth] touched: %s", got)
			}
			if got := strings.Join(section(text, "300", 1), "|"); got != "type = aor|max_contacts = 5" {
				t.Errorf("[300] aor: %s", got)
			}
		})
	}
	// catfilter picks among same-named sections.
	s := start(t, Options{})
	c := dial(t, s)
	c.login("off")
	c.send("Action: UpdateConfig", "SrcFilename: pjsip.conf", "DstFilename: pjsip.conf", "Action-000000: Update",
		"Cat-000000: 300", "Var-000000: max_contacts", "Value-000000: 1", `Options-000000: catfilter="type=aor"`, "ActionID: aor")
	if f, _ := c.response("aor"); f.get("Response") != "Success" {
		t.Fatalf("update aor: %v", f.hdrs)
	}
	text := s.Conf("pjsip.conf")
	if got := strings.Join(section(text, "300", 1), "|"); got != "type = aor|max_contacts = 1" {
		t.Errorf("[300] aor: %s", got)
	}
	if got := strings.Join(section(text, "300", 0), "|"); !strings.HasPrefix(got, "type = endpoint|") || strings.Contains(got, "max_contacts") {
		t.Errorf("[300] endpoint: %s", got)
	}
	// Without catfilter the first [300] (the endpoint) has no max_contacts.
	c.send("Action: UpdateConfig", "SrcFilename: pjsip.conf", "DstFilename: pjsip.conf", "Action-000000: Update",
		"Cat-000000: 300", "Var-000000: max_contacts", "Value-000000: 2", "ActionID: first")
	if f, _ := c.response("first"); f.get("Message") != "Update did not complete successfully" {
		t.Errorf("update of the endpoint's missing key: %v", f.hdrs)
	}
}

func TestCommandAsDialog(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	c := dial(t, s)
	c.login("call,security,system")
	c.ping("drain")
	for _, aid := range []string{"cmd-sip-reload", "cmd-pjsip-reload"} {
		action, want := dialogFor(t, dialog20, aid)
		c.send(actionLines(action)...)
		f := c.next()
		sameKeys(t, aid, f, want[0])
		sameValues(t, aid, f, want[0])
	}
	if ev := c.next(); !ev.isEvent("Reload") || ev.get("Module") != "res_pjsip.so" {
		t.Errorf("after module reload: %v", ev.hdrs)
	}
	c.send("Action: Command", "Command: pjsip reload", "ActionID: bad")
	f := c.next()
	if f.get("Response") != "Error" || !strings.HasPrefix(f.get("Output"), "No such command 'pjsip reload'") {
		t.Errorf("unknown command: %v", f.hdrs)
	}
}
