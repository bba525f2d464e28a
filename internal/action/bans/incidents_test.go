package bans

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"testing"
	"time"
)

// incidentsDoc is a state file with bans and an incidents list whose
// content this package does not know.
const incidentsDoc = `{"version":2,"bans":[
  {"prefix":"203.0.113.7/32","since":"2026-03-01T11:00:00Z","until":"2026-03-01T14:00:00Z","reason":"r","dry_run":false,"origin":"astguard","incident":"inc-00000001"}
],
"incidents": [ {"id": "inc-00000001", "anything": {"the": ["book", 1]}} ]}`

const incidentsCompact = `[{"id":"inc-00000001","anything":{"the":["book",1]}}]`

func mustRead(t *testing.T, path string) State {
	t.Helper()
	st, err := ReadState(path)
	if err != nil {
		t.Fatalf("ReadState: %v", err)
	}
	return st
}

// The incidents are the book's: stored as they are, kept when a ban
// changes the file, replaced by SaveIncidents, and read back after a
// restart.
func TestIncidentsKeptAcrossWritesAndRestart(t *testing.T) {
	e := newEnv(t)
	mustWrite(t, e.path, []byte(incidentsDoc), 0o600)
	m := e.start(e.opts())
	if got := string(m.Incidents()); got != incidentsCompact {
		t.Fatalf("Incidents() after Start = %s, want %s", got, incidentsCompact)
	}
	if _, err := m.Ban(ctx, Request{Addr: other, TTL: time.Hour, Reason: "x", Incident: "inc-00000002"}); err != nil {
		t.Fatal(err)
	}
	st := mustRead(t, e.path)
	if string(st.Incidents) != incidentsCompact {
		t.Fatalf("incidents after a ban = %s, want them unchanged", st.Incidents)
	}
	if len(st.Bans) != 2 || st.Bans[1].Incident != "inc-00000002" {
		t.Fatalf("bans = %+v, want the new one owned by inc-00000002", st.Bans)
	}

	next := json.RawMessage(`[{"id":"inc-00000001"},{"id":"inc-00000002"}]`)
	if err := m.SaveIncidents(next); err != nil {
		t.Fatal(err)
	}
	st = mustRead(t, e.path)
	if !bytes.Equal(st.Incidents, next) || len(st.Bans) != 2 {
		t.Fatalf("after SaveIncidents: incidents %s, %d bans", st.Incidents, len(st.Bans))
	}
	// Saving the same list again does not write the file.
	before, _ := os.Stat(e.path)
	setRenameHook(func(string) error { return errors.New("written again") })
	defer setRenameHook(nil)
	if err := m.SaveIncidents(next); err != nil {
		t.Fatalf("SaveIncidents of the same list: %v", err)
	}
	setRenameHook(nil)
	if after, _ := os.Stat(e.path); !after.ModTime().Equal(before.ModTime()) {
		t.Fatal("the same incidents were written again")
	}

	crash(m)
	m2 := e.start(e.opts())
	if got := m2.Incidents(); !bytes.Equal(got, next) {
		t.Fatalf("Incidents() after a restart = %s, want %s", got, next)
	}
	// The caller's copy: changing it changes nothing in the manager.
	got := m2.Incidents()
	got[0] = '{'
	if !bytes.Equal(m2.Incidents(), next) {
		t.Fatal("Incidents() returned the manager's own slice")
	}
}

// A state file written before the book saved anything has no incidents:
// Incidents is nil and the file keeps having none.
func TestIncidentsAbsent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	if got := m.Incidents(); got != nil {
		t.Fatalf("Incidents() of a new state = %s, want nil", got)
	}
	ban(m, attack, time.Hour, "x", "")
	if err := m.Close(ctx); err != nil { // writes the state file
		t.Fatal(err)
	}
	raw, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("incidents")) {
		t.Fatalf("state file without incidents has the key:\n%s", raw)
	}
	mustWrite(t, e.path+".null", []byte(`{"version":2,"bans":[],"incidents":null}`), 0o600)
	if st := mustRead(t, e.path+".null"); st.Incidents != nil {
		t.Fatalf("incidents null read as %s, want none", st.Incidents)
	}
}

// Observe mode writes nothing: SaveIncidents is refused and keeps nothing,
// so an Unban (which does write in observe mode) writes the incidents as
// they were read.
func TestSaveIncidentsInObserveMode(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustWrite(t, e.path, []byte(incidentsDoc), 0o600)
	before, _ := os.Stat(e.path)
	o := e.opts()
	o.Observe = true
	m := e.start(o)
	if err := m.SaveIncidents(json.RawMessage(`[{"id":"inc-observed"}]`)); !errors.Is(err, ErrObserving) {
		t.Fatalf("SaveIncidents in observe mode = %v, want ErrObserving", err)
	}
	if after, _ := os.Stat(e.path); !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Fatal("observe mode wrote the state file")
	}
	if err := m.Unban(ctx, attack); err != nil {
		t.Fatal(err)
	}
	if st := mustRead(t, e.path); string(st.Incidents) != incidentsCompact || len(st.Bans) != 0 {
		t.Fatalf("after Unban in observe mode: incidents %s, bans %v", st.Incidents, st.Bans)
	}
}

func TestSaveIncidentsRefusesWhatIsNoList(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.start(e.opts())
	for _, raw := range []string{``, `{}`, `"x"`, `null`, `[`, `[] []`} {
		if err := m.SaveIncidents(json.RawMessage(raw)); err == nil {
			t.Errorf("SaveIncidents(%q) accepted", raw)
		}
	}
	if _, err := os.Stat(e.path); err == nil {
		if st := mustRead(t, e.path); st.Incidents != nil {
			t.Fatalf("a refused list was written: %s", st.Incidents)
		}
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.SaveIncidents(json.RawMessage(`[]`)); !errors.Is(err, ErrClosed) {
		t.Fatalf("SaveIncidents after Close = %v, want ErrClosed", err)
	}
}

// A state file whose incidents are not a list is corrupt, like one with a
// bad ban; version 1 had no incidents.
func TestReadStateRejectsBadIncidents(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/bans.json"
	for _, s := range []string{
		`{"version":2,"bans":[],"incidents":{}}`,
		`{"version":2,"bans":[],"incidents":5}`,
		`{"version":2,"bans":[],"incidents":"[]"}`,
		`{"version":1,"bans":[],"incidents":[]}`,
	} {
		mustWrite(t, path, []byte(s), 0o600)
		if _, err := ReadState(path); !errors.Is(err, ErrCorrupt) {
			t.Errorf("ReadState(%s) = %v, want ErrCorrupt", s, err)
		}
	}
}

// guard unblock without a running guard keeps the incidents.
func TestUnbanOfflineKeepsIncidents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mustWrite(t, e.path, []byte(incidentsDoc), 0o600)
	if _, err := UnbanOffline(ctx, e.path, e.fw, attack); err != nil {
		t.Fatal(err)
	}
	if st := mustRead(t, e.path); string(st.Incidents) != incidentsCompact || len(st.Bans) != 0 {
		t.Fatalf("after UnbanOffline: incidents %s, bans %v", st.Incidents, st.Bans)
	}
}

// EditIncidentsOffline (guard release with no daemon) replaces the
// incidents under the lock and keeps the bans; an edit that fails, a
// running manager, a version 1 file and a result that is no list write
// nothing.
func TestEditIncidentsOffline(t *testing.T) {
	e := newEnv(t)
	mustWrite(t, e.path, []byte(incidentsDoc), 0o600)
	next := json.RawMessage(`[{"id":"inc-00000001","released":true}]`)
	var got json.RawMessage
	if err := EditIncidentsOffline(e.path, func(raw json.RawMessage) (json.RawMessage, error) {
		got = raw
		return json.RawMessage(" [ {\"id\": \"inc-00000001\", \"released\": true} ] "), nil
	}); err != nil {
		t.Fatal(err)
	}
	if string(got) != incidentsCompact {
		t.Fatalf("edit got %s, want %s", got, incidentsCompact)
	}
	st := mustRead(t, e.path)
	if !bytes.Equal(st.Incidents, next) || len(st.Bans) != 1 || st.Bans[0].Incident != "inc-00000001" {
		t.Fatalf("after the edit: incidents %s, bans %+v", st.Incidents, st.Bans)
	}
	if fi, _ := os.Stat(e.path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}

	unchanged := func(what string) {
		t.Helper()
		if st := mustRead(t, e.path); !bytes.Equal(st.Incidents, next) || len(st.Bans) != 1 {
			t.Fatalf("%s changed the file: incidents %s, bans %+v", what, st.Incidents, st.Bans)
		}
	}
	errEdit := errors.New("no open incident")
	if err := EditIncidentsOffline(e.path, func(json.RawMessage) (json.RawMessage, error) { return nil, errEdit }); !errors.Is(err, errEdit) {
		t.Fatalf("a failing edit: %v", err)
	}
	unchanged("a failing edit")
	for _, bad := range []string{``, `{}`, `null`} {
		if err := EditIncidentsOffline(e.path, func(json.RawMessage) (json.RawMessage, error) { return json.RawMessage(bad), nil }); err == nil {
			t.Fatalf("an edit returning %q was written", bad)
		}
	}
	unchanged("an edit returning no list")

	m := e.start(e.opts())
	called := false
	if err := EditIncidentsOffline(e.path, func(json.RawMessage) (json.RawMessage, error) { called = true; return next, nil }); !errors.Is(err, ErrLocked) || called {
		t.Fatalf("while the daemon runs: %v, edit called %v; want ErrLocked before any edit", err, called)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// A version 1 file, as an older guard left it: no journal.
	v1 := `{"version":1,"bans":[{"addr":"203.0.113.7","since":"2026-03-01T11:00:00Z","until":"2026-03-01T14:00:00Z","reason":"r"}]}`
	if err := os.Remove(JournalName(e.path)); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, e.path, []byte(v1), 0o600)
	got = json.RawMessage("not called")
	if err := EditIncidentsOffline(e.path, func(raw json.RawMessage) (json.RawMessage, error) { got = raw; return next, nil }); err == nil || got != nil {
		t.Fatalf("a version 1 file: %v, edit got %q; want nil and a refusal", err, got)
	}
	if raw, _ := os.ReadFile(e.path); string(raw) != v1 {
		t.Fatalf("the version 1 file was rewritten:\n%s", raw)
	}
}
