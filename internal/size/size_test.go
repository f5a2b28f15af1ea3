package size

import "testing"

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64 // 0 = must fail
	}{
		{"512M", 512 << 20},
		{"10G", 10 << 30},
		{"1T", 1 << 40},
		{"2", 2 << 30}, // bare number is GiB, as in pxctl
		{"10g", 10 << 30},
		{"10GiB", 10 << 30},
		{"10Gi", 10 << 30},
		{"10GB", 10 << 30},
		{" 64G ", 64 << 30},
		{"4K", 4 << 10},
		{"1P", 1 << 50},
		{"8191P", 8191 << 50},
		{"abc", 0},
		{"", 0},
		{"0", 0},
		{"0G", 0},
		{"-1G", 0},
		{"-1", 0},
		{"1.5G", 0},
		{"10X", 0},
		{"G", 0},
		{"10 G B", 0},
		{"8192P", 0},                // overflows int64
		{"99999999999999999999", 0}, // overflows int64
	} {
		got, err := Parse(tc.in)
		if tc.want == 0 {
			if err == nil {
				t.Errorf("Parse(%q) = %d, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{4096, "4 KiB"},
		{512 << 20, "512 MiB"},
		{10 << 30, "10 GiB"},
		{3 << 29, "1.5 GiB"},
		{1 << 40, "1 TiB"},
	} {
		if got := Format(tc.in); got != tc.want {
			t.Errorf("Format(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestExactSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0"},
		{1000, "1000 bytes"},
		{4097, "4097 bytes"},
		{4096, "4K"},
		{512 << 20, "512M"},
		{3 << 29, "1536M"},
		{10 << 30, "10G"},
		{64 << 40, "64T"},
		{100 << 50, "100P"},
		{8191 << 50, "8191P"},
		{1<<40 + 4096, "1073741828K"},
		{-4096, "-4K"},
	} {
		got := Exact(tc.in)
		if got != tc.want {
			t.Errorf("Exact(%d) = %q, want %q", tc.in, got, tc.want)
			continue
		}
		if tc.in > 0 && tc.in%1024 == 0 {
			if back, err := Parse(got); err != nil || back != tc.in {
				t.Errorf("Parse(Exact(%d)) = %d, %v", tc.in, back, err)
			}
		}
	}
}
