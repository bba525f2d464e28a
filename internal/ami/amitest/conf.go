package amitest

import (
	"regexp"
	"strings"
	"time"
)

// confFile is an Asterisk config file in memory: categories in file order
// (same-named categories stay distinct, like pjsip.conf's [300] endpoint and
// [300] aor), with comments and blank lines kept for the rewrite.
type confFile struct {
	name     string
	original string // the text as given, until the first save
	saved    bool
	savedAt  time.Time
	head     []string // lines before the first category
	cats     []*confCat
}

type confCat struct {
	name  string
	rest  string // what follows "]" on the header line, e.g. "(!)" or "(tpl)"
	items []confItem
}

// confItem is a variable or a line kept verbatim (comment, blank, #include).
type confItem struct {
	isVar   bool
	raw     string
	name    string
	value   string
	object  bool   // "=>" instead of "="
	comment string // a comment on the same line, from its ';'
}

func parseConf(name, text string) *confFile {
	f := &confFile{name: name, original: text}
	var cur *confCat
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		line = strings.TrimSuffix(line, "\r")
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, ";!") {
			continue // the header of a generated file: rewritten on save
		}
		if strings.HasPrefix(t, "[") {
			if end := strings.IndexByte(t, ']'); end > 0 {
				cur = &confCat{name: strings.TrimSpace(t[1:end]), rest: t[end+1:]}
				f.cats = append(f.cats, cur)
				continue
			}
		}
		item := confItem{raw: line}
		body, comment := splitComment(line)
		if eq := strings.IndexByte(body, '='); eq > 0 && strings.TrimSpace(body[:eq]) != "" && !strings.HasPrefix(t, "#") {
			item.isVar = true
			item.name = strings.TrimSpace(body[:eq])
			v := body[eq+1:]
			if strings.HasPrefix(v, ">") {
				item.object, v = true, v[1:]
			}
			item.value = strings.TrimSpace(v)
			item.comment = comment
		}
		if cur == nil {
			f.head = append(f.head, line)
		} else {
			cur.items = append(cur.items, item)
		}
	}
	return f
}

// splitComment splits a line at its first unescaped ';'.
func splitComment(line string) (string, string) {
	for i := 0; i < len(line); i++ {
		if line[i] == ';' && (i == 0 || line[i-1] != '\\') {
			return line[:i], line[i:]
		}
	}
	return line, ""
}

// get returns the first value of a variable (name case ignored).
func (c *confCat) get(name string) string {
	for _, it := range c.items {
		if it.isVar && strings.EqualFold(it.name, name) {
			return it.value
		}
	}
	return ""
}

func (c *confCat) vars() []confItem {
	var out []confItem
	for _, it := range c.items {
		if it.isVar {
			out = append(out, it)
		}
	}
	return out
}

// find returns the first category with this name (case ignored) that
// matches the filter, or nil.
func (f *confFile) find(name, filter string) *confCat {
	for _, c := range f.cats {
		if strings.EqualFold(c.name, name) && c.matches(filter) {
			return c
		}
	}
	return nil
}

// matches applies a category filter, "name=regex[,name=regex...]" as
// Asterisk's catfilter: every named variable must exist and match its
// (unanchored, POSIX extended) regular expression. An empty filter matches.
func (c *confCat) matches(filter string) bool {
	filter = strings.TrimSpace(filter)
	if filter == "" {
		return true
	}
	for _, cond := range strings.Split(filter, ",") {
		k, v, ok := strings.Cut(cond, "=")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		found := false
		re, err := regexp.CompilePOSIX(strings.TrimSpace(v))
		for _, it := range c.items {
			if it.isVar && strings.EqualFold(it.name, k) {
				if err == nil && re.MatchString(it.value) || err != nil && it.value == strings.TrimSpace(v) {
					found = true
					break
				}
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func (f *confFile) clone() *confFile {
	g := *f
	g.head = append([]string(nil), f.head...)
	g.cats = make([]*confCat, len(f.cats))
	for i, c := range f.cats {
		cc := *c
		cc.items = append([]confItem(nil), c.items...)
		g.cats[i] = &cc
	}
	return &g
}

// text returns the file: as given until the first save, then as Asterisk's
// ast_config_text_file_save writes it (a ";!" header, "k = v", comments and
// blank lines kept).
func (f *confFile) text() string {
	if !f.saved {
		return f.original
	}
	var b strings.Builder
	b.WriteString(";!\n")
	b.WriteString(";! Automatically generated configuration file\n")
	b.WriteString(";! Filename: " + f.name + " (/etc/asterisk/" + f.name + ")\n")
	b.WriteString(";! Generator: Manager\n")
	b.WriteString(";! Creation Date: " + f.savedAt.Format("Mon Jan _2 15:04:05 2006") + "\n")
	b.WriteString(";!\n")
	for _, l := range f.head {
		b.WriteString(l + "\n")
	}
	for _, c := range f.cats {
		b.WriteString("[" + c.name + "]" + c.rest + "\n")
		for _, it := range c.items {
			if !it.isVar {
				b.WriteString(it.raw + "\n")
				continue
			}
			op := "="
			if it.object {
				op = "=>"
			}
			b.WriteString(it.name + " " + op + " " + it.value)
			if it.comment != "" {
				b.WriteString("  " + it.comment)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// updateResult is the outcome of UpdateConfig's steps, with Asterisk's
// messages (manager.c handle_updates / action_updateconfig).
type updateResult string

const (
	updOK               updateResult = ""
	updUnknownAction    updateResult = "Unknown action command"
	updUnknownCategory  updateResult = "Given category does not exist"
	updNoCategory       updateResult = "Category not specified"
	updNoArgument       updateResult = "Problem with category, value, or line (if required)"
	updFailNewCat       updateResult = "Create category did not complete successfully"
	updFailDelCat       updateResult = "Delete category did not complete successfully"
	updFailEmptyCat     updateResult = "Empty category did not complete successfully"
	updFailUpdate       updateResult = "Update did not complete successfully"
	updFailDelete       updateResult = "Delete did not complete successfully"
	updFailAppend       updateResult = "Append did not complete successfully"
	updFailInsert       updateResult = "Insert did not complete successfully" // not in Asterisk's table: see doc
	updTemplateNotFound updateResult = "Template category not found"
)

// step is one numbered UpdateConfig step.
type step struct {
	action, cat, varName, value, match, line, options string
	hasVar                                            bool
}

// options parses an Options-NNNNNN value: comma-separated, quotes group
// (catfilter="type=auth,x=y").
func parseOptions(v string) map[string]string {
	out := map[string]string{}
	var parts []string
	var cur strings.Builder
	inQ := false
	for _, r := range v {
		switch {
		case r == '"':
			inQ = !inQ
		case r == ',' && !inQ:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	parts = append(parts, cur.String())
	for _, p := range parts {
		k, val, _ := strings.Cut(p, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if k != "" {
			out[k] = strings.TrimSpace(val)
		}
	}
	return out
}

// apply runs the steps on f (a copy: on error the caller discards it).
func (f *confFile) apply(steps []step) updateResult {
	for _, st := range steps {
		opts := parseOptions(st.options)
		filter := opts["catfilter"]
		switch strings.ToLower(st.action) {
		case "newcat":
			if st.cat == "" {
				return updNoCategory
			}
			if _, dup := opts["allowdups"]; !dup && f.find(st.cat, "") != nil {
				return updFailNewCat
			}
			rest := ""
			if _, ok := opts["template"]; ok {
				rest = "(!)"
			}
			if inh := opts["inherit"]; inh != "" {
				if f.find(inh, "") == nil {
					return updTemplateNotFound
				}
				if rest == "" {
					rest = "(" + inh + ")"
				} else {
					rest = "(!," + inh + ")"
				}
			}
			f.cats = append(f.cats, &confCat{name: st.cat, rest: rest})
		case "renamecat":
			if st.cat == "" {
				return updNoCategory
			}
			if st.value == "" {
				return updNoArgument
			}
			c := f.find(st.cat, filter)
			if c == nil {
				return updUnknownCategory
			}
			c.name = st.value
		case "delcat":
			if st.cat == "" {
				return updNoCategory
			}
			c := f.find(st.cat, filter)
			if c == nil {
				return updUnknownCategory
			}
			for i := range f.cats {
				if f.cats[i] == c {
					f.cats = append(f.cats[:i], f.cats[i+1:]...)
					break
				}
			}
		case "emptycat":
			if st.cat == "" {
				return updNoCategory
			}
			c := f.find(st.cat, filter)
			if c == nil {
				return updUnknownCategory
			}
			c.items = nil
		case "update":
			if st.cat == "" {
				return updNoCategory
			}
			if !st.hasVar {
				return updNoArgument
			}
			c := f.find(st.cat, filter)
			if c == nil {
				return updUnknownCategory
			}
			done := false
			for i := range c.items {
				it := &c.items[i]
				if it.isVar && strings.EqualFold(it.name, st.varName) && (st.match == "" || strings.EqualFold(it.value, st.match)) {
					it.value = st.value
					if _, ok := opts["object"]; ok {
						it.object = true
					}
					done = true
					break
				}
			}
			if !done {
				return updFailUpdate
			}
		case "delete":
			if st.cat == "" {
				return updNoCategory
			}
			if !st.hasVar && st.line == "" {
				return updNoArgument
			}
			c := f.find(st.cat, filter)
			if c == nil {
				return updUnknownCategory
			}
			done := false
			for i, it := range c.items {
				if it.isVar && strings.EqualFold(it.name, st.varName) && (st.match == "" || strings.EqualFold(it.value, st.match)) {
					c.items = append(c.items[:i], c.items[i+1:]...)
					done = true
					break
				}
			}
			if !done {
				return updFailDelete
			}
		case "append", "insert":
			if st.cat == "" {
				return updNoCategory
			}
			if !st.hasVar {
				return updNoArgument
			}
			c := f.find(st.cat, filter)
			if c == nil {
				return updUnknownCategory
			}
			_, obj := opts["object"]
			it := confItem{isVar: true, name: st.varName, value: st.value, object: obj}
			if strings.EqualFold(st.action, "insert") {
				n, ok := atoiStr(st.line)
				if !ok {
					return updFailInsert
				}
				pos, seen := len(c.items), 0
				for i, x := range c.items {
					if x.isVar {
						if seen == n {
							pos = i
							break
						}
						seen++
					}
				}
				c.items = append(c.items[:pos], append([]confItem{it}, c.items[pos:]...)...)
			} else {
				// After the last variable, before trailing blank lines.
				pos := len(c.items)
				for pos > 0 && !c.items[pos-1].isVar && strings.TrimSpace(c.items[pos-1].raw) == "" {
					pos--
				}
				c.items = append(c.items[:pos], append([]confItem{it}, c.items[pos:]...)...)
			}
		default:
			return updUnknownAction
		}
	}
	return updOK
}

func atoiStr(s string) (int, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, false
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
