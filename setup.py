"""mmnorm: learning-to-normalize layers for the OpenMMLab toolkits."""
import os

from setuptools import find_packages, setup


def read_version() -> str:
    scope: dict = {}
    with open(os.path.join('mmnorm', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


with open('README.md', encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='mmnorm',
    version=read_version(),
    description='Switchable, sparse, synchronized, instance-batch and Kalman '
    'normalization for mmdet, mmsegmentation and mmaction2',
    long_description=long_description,
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['mmnorm', 'mmnorm.*']),
    # the CPU kernel's source, compiled on first use (mmnorm/ops/_kernel.py)
    package_data={'mmnorm.ops': ['csrc/*.cpp', 'csrc/*.h']},
    python_requires='>=3.9',
    # The full pinned stack is in requirements/stack.txt and is installed by
    # tools/setup_env.sh; only what `import mmnorm` needs is declared here,
    # with torch left to the user so pip never swaps their build.
    install_requires=['mmengine>=0.10.7,<0.11', 'mmcv>=2.1.0,<2.2.0'],
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
