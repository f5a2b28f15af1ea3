package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/atomicfile"
)

// catalogFile, in the data directory, is the engine's volume catalog: every
// volume's name and pool, so that the names of a missing pool stay taken
// (engine/names.go).
const catalogFile = "volumes.json"

// catalogVersion is the format of catalogFile; a newer one is refused.
const catalogVersion = 1

type catalogDoc struct {
	Version int                   `json:"version"`
	Volumes []engine.CatalogEntry `json:"volumes"`
}

// VolumeCatalog keeps the engine's catalog in DATA_DIR/volumes.json.
type VolumeCatalog struct {
	path string
	log  *slog.Logger
}

func NewVolumeCatalog(dataDir string, log *slog.Logger) *VolumeCatalog {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &VolumeCatalog{path: filepath.Join(dataDir, catalogFile), log: log}
}

// Load reads the catalog. A node from before the catalog has none: the
// engine writes it from the pools it opens. A damaged file is moved aside
// (and logged) rather than stopping the node: what it would have reserved
// are the names of pools that are missing now, and the rest is rebuilt.
func (c *VolumeCatalog) Load() ([]engine.CatalogEntry, error) {
	buf, err := os.ReadFile(c.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("control: read %s: %w", c.path, err)
	}
	var doc catalogDoc
	err = json.Unmarshal(buf, &doc)
	if err == nil && doc.Version > catalogVersion {
		return nil, fmt.Errorf("control: %s has format version %d; this cairn reads up to %d", c.path, doc.Version, catalogVersion)
	}
	if err != nil || doc.Version == 0 {
		aside := fmt.Sprintf("%s.damaged-%s", c.path, time.Now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(c.path, aside); rerr != nil {
			return nil, fmt.Errorf("control: %s is damaged (%v) and cannot be moved aside: %w", c.path, err, rerr)
		}
		c.log.Error("volume catalog damaged, moved aside; names of missing pools are not reserved", "path", aside, "err", err)
		return nil, nil
	}
	return doc.Volumes, nil
}

// Save replaces the catalog, durably.
func (c *VolumeCatalog) Save(entries []engine.CatalogEntry) error {
	if entries == nil {
		entries = []engine.CatalogEntry{}
	}
	buf, err := json.MarshalIndent(catalogDoc{Version: catalogVersion, Volumes: entries}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(c.path, append(buf, '\n'), 0o600)
}
