"""Sphinx configuration of mmnorm's documentation (``make docs``)."""
import os
import sys

sys.path.insert(0, os.path.abspath('..'))

project = 'mmnorm'
author = 'mmnorm contributors'
copyright = '2026, mmnorm contributors (Apache-2.0)'
version = release = __import__('mmnorm').__version__

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build']
myst_heading_anchors = 3
napoleon_custom_sections = [('Shape', 'params_style'),
                            ('Buffers', 'params_style')]
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_default_options = {'members': True, 'show-inheritance': True}
html_theme = 'furo'
html_title = f'mmnorm {release}'
