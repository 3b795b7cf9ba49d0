"""Recipe → lock → base layer (mmdebstrap) → app layer → normalized, stored image."""
