package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"text/tabwriter"
)

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// indentedTable writes a table whose every line starts with a tab, under a
// heading line (the pxctl status layout).
func indentedTable(w io.Writer, rows func(t io.Writer)) {
	var buf bytes.Buffer
	t := newTable(&buf)
	rows(t)
	t.Flush()
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if line != "" {
			io.WriteString(w, "\t"+line)
		}
	}
}

// newTable returns a tab-separated table writer; call Flush when done.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func upper(s string) string { return strings.ToUpper(s) }
