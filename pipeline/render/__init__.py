"""Pictures: PNG galleries of samples, captioned with why they were chosen (`gallery`), and the report
page's parts: embedded pictures, inline SVG charts, tables, the style sheet (`page`)."""
