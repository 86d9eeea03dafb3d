-- Histograms of numeric model outputs, per telemetry window.
ALTER TABLE telemetry ADD COLUMN outputs TEXT NOT NULL DEFAULT '{}';
