"""Pictures: PNG galleries of samples, captioned with why they were chosen."""
